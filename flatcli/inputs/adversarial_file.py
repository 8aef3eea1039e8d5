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

from flatcli.inputs.data.source import DataSource
from flatcli.inputs.data.tensors import save_tensors

METADATA_KEY = "flatrob.attack"


def save_adversarials(path: str | os.PathLike, x: Tensor, y: Tensor, index: Tensor, **provenance) -> None:
    """Write the adversarials and their ``provenance`` (JSON-able values) atomically."""
    save_tensors(path, x, y, index, metadata={METADATA_KEY: json.dumps(provenance, sort_keys=True)})


def attack_metadata(data: DataSource) -> dict | None:
    """The ``flatrob.attack`` metadata of a ``--save-adv`` file (``None`` when absent or unreadable)."""
    text = data.metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None
