"""The adversarial-examples file (``--save-adv``): a ``tensors:`` file plus where its examples came from.

``x`` (the final iterates), ``y`` and ``index`` as :func:`flatcli.inputs.data.tensors.save_tensors` writes
them, and one metadata key ``flatrob.attack`` holding a JSON object (sorted keys) with the checkpoint's
sha256, the data, the seed, targeting, scaling and the attack's settings. One key only: safetensors
writes several in random (hash) order, which would break "same seed, same bytes". Reading it back
(:func:`attack_metadata`) tells ``detect --adversarial`` whether the examples were crafted on this model.
"""

from __future__ import annotations

import json
import os

from torch import Tensor

from flatcli.errors import DataError
from flatcli.inputs.data.source import DataSource
from flatcli.inputs.data.tensors import save_tensors

METADATA_KEY = "flatrob.attack"
#: How deep the provenance may nest (``--save-adv`` writes an object of numbers, strings and short lists).
MAX_DEPTH = 4


def save_adversarials(path: str | os.PathLike, x: Tensor, y: Tensor, index: Tensor, **provenance) -> None:
    """Write the adversarials and their ``provenance`` (JSON-able values) atomically."""
    save_tensors(path, x, y, index, metadata={METADATA_KEY: json.dumps(provenance, sort_keys=True)})


def _depth(value) -> int:
    """How deep containers nest in a JSON value (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth + 1)
            if depth + 1 <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def attack_metadata(data: DataSource) -> dict | None:
    """The ``flatrob.attack`` metadata of a ``--save-adv`` file (``None`` when absent); :class:`DataError`
    naming the file when it is there but not what ``--save-adv`` writes (not a JSON object, nested deeper
    than :data:`MAX_DEPTH`)."""
    text = data.metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or _depth(meta) > MAX_DEPTH:
        raise DataError(f"{data.name}: its {METADATA_KEY} metadata is not what --save-adv writes (a JSON object "
                        f"nested at most {MAX_DEPTH} deep); remove the key or write the file again with --save-adv")
    return meta
