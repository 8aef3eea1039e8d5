"""Hugging Face hub checkpoints: a hub folder (``config.json`` + ``model.safetensors``) or ``hf-hub:ORG/NAME[@REV]``.

A hub folder is what ``timm.models.save_for_hf`` / ``push_to_hf_hub`` write and what the hub ships for
timm models: the weights as ``model.safetensors`` and a ``config.json`` naming the timm architecture
(``architecture``), the classes (``num_classes``), the build arguments (``model_args``) and the data
config (``pretrained_cfg``: mean, std, input size, crop_pct, interpolation). ``hf-hub:ORG/NAME[@REV]``
fetches those two files through ``huggingface_hub.hf_hub_download``: its cache (``HF_HUB_CACHE``,
``HF_HOME``), its offline mode (``HF_HUB_OFFLINE=1``: the cache only) and its progress bars on stderr;
the files a run reads are the cache's, so outputs are checked against them like any input.

The config fills the spec below every other source (embedded spec, ``--spec``, options). It names no
code: ``architecture`` becomes ``timm:<architecture>``, a name in timm's registry, and nothing else of
the file is imported or called; ``pytorch_model.bin`` (a pickle) is never read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatcli.errors import CheckpointError
from flatcli.inputs.preprocessing import from_timm
from flatcli.inputs.text import read_text

PREFIX = "hf-hub:"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
#: A hub config.json is read up to this size (ImageNet-21k label names take about 1 MB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: ``architecture`` values: a timm registry name, optionally with its pretrained tag.
_ARCH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


@dataclass(frozen=True)
class HubFiles:
    """The two files of a hub checkpoint on disk."""

    config: Path
    weights: Path


def is_hub(ref: str) -> bool:
    """Whether ``ref`` names a hub checkpoint: ``hf-hub:...`` or a folder holding ``config.json``."""
    if ref.startswith(PREFIX):
        return True
    path = Path(ref).expanduser()
    return path.is_dir() and (path / CONFIG).is_file()


def locate(ref: str) -> HubFiles:
    """The config and weights of the hub checkpoint ``ref`` (downloaded into the hub's cache if need be)."""
    if ref.startswith(PREFIX):
        return _download(ref)
    folder = Path(ref).expanduser()
    weights = folder / WEIGHTS
    if not weights.is_file():
        present = sorted(p.name for p in folder.iterdir())[:10]
        pickle = " (pytorch_model.bin is a pickle: flatrob convert turns it into model.safetensors)" \
            if "pytorch_model.bin" in present else ""
        raise CheckpointError(f"hub folder {folder} has {CONFIG} but no {WEIGHTS}{pickle}; it holds: "
                              f"{', '.join(present)}")
    return HubFiles(config=folder / CONFIG, weights=weights)


def _download(ref: str) -> HubFiles:
    repo, _, revision = ref[len(PREFIX):].partition("@")
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise CheckpointError("hf-hub: checkpoints need huggingface_hub: pip install 'flatrob[hub]'") from None
    try:
        validate_repo_id(repo)
    except errors.HFValidationError:
        raise CheckpointError(f"{ref} must look like hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION") from None
    paths = {}
    for filename in (CONFIG, WEIGHTS):
        try:
            paths[filename] = Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision or None))
        except errors.LocalEntryNotFoundError:
            raise CheckpointError(
                f"{ref}: {filename} is not in the hub cache ({constants.HF_HUB_CACHE}) and could not be "
                "downloaded (HF_HUB_OFFLINE is set, or the hub cannot be reached); download it once online, or point "
                "HF_HUB_CACHE at the cache that holds it"
            ) from None
        except errors.EntryNotFoundError:  # after LocalEntryNotFoundError, its subclass: the hub lacks the file
            raise CheckpointError(f"{ref} has no {filename}; flatrob reads timm-style repositories ({CONFIG} + "
                                  f"{WEIGHTS})") from None
        except errors.RevisionNotFoundError:
            raise CheckpointError(f"{ref}: the repository has no revision {revision!r}") from None
        except errors.RepositoryNotFoundError:
            raise CheckpointError(f"{ref}: no such repository on the hub (or it is private: log in with hf auth "
                                  "login)") from None
        except (errors.HfHubHTTPError, OSError, ValueError) as exc:
            raise CheckpointError(f"{ref}: cannot fetch {filename}: {' '.join(str(exc).split())[:200]}") from None
    return HubFiles(config=paths[CONFIG], weights=paths[WEIGHTS])


def read_config(path: Path) -> dict[str, Any]:
    """Spec keys from a hub ``config.json``: ``arch: timm:<architecture>``, ``num_classes``, ``arch_kwargs``
    (``model_args`` less the classes and channels, which the spec and weights give) and the data config."""
    text = read_text(path, limit=MAX_CONFIG_BYTES, what="hub config", error=CheckpointError)
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    out: dict[str, Any] = {}
    arch = doc.get("architecture")
    if arch is not None:
        if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
            raise CheckpointError(f"{path}: architecture must be a timm model name, got {str(arch)[:80]!r}")
        out["arch"] = "timm:" + arch
    classes = doc.get("num_classes")
    if classes is not None:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise CheckpointError(f"{path}: num_classes must be a positive integer, got {str(classes)[:80]!r}")
        out["num_classes"] = classes
    args = doc.get("model_args")
    if args is not None:
        if not isinstance(args, dict):
            raise CheckpointError(f"{path}: model_args must be an object, got {type(args).__name__}")
        kwargs = {k: v for k, v in args.items() if k not in ("num_classes", "in_chans")}
        if kwargs:
            out["arch_kwargs"] = kwargs
    cfg = doc.get("pretrained_cfg")
    if isinstance(cfg, dict):
        out.update(from_timm(cfg, fixed_input_size=cfg.get("fixed_input_size") is True))
    return out
