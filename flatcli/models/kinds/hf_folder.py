"""Reading a causal language model from a Hugging Face folder: safetensors only, no download, no remote code.

A folder (or ``hf-hub:ORG/NAME[@REV]``, a folder of the hub's local cache) holds ``config.json``
(``architectures`` naming a ``*ForCausalLM``), the weights as
``model.safetensors`` or shards listed in ``model.safetensors.index.json``, and the tokenizer's files.
Everything is checked from the files before ``transformers`` is imported: a config that asks for code of its
own (``auto_map``) is refused unless ``trust_embedded_code``; an architecture ``transformers`` does not ship
is refused likewise (its class could only come from the folder's code). ``pytorch_model.bin`` is never read
(it is a pickle). Loading runs with ``local_files_only=True`` and ``use_safetensors=True`` under the audit
hook that refuses network connections, with eager attention (the same numbers on every device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from flatcli.errors import CheckpointError, MissingExtraError, OptionError
from flatcli.inputs.audit import NETWORK_EVENTS, refusing

#: ``--dtype`` names and the torch dtypes the weights are loaded in.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class FolderConfig:
    """What ``config.json`` says, read as plain JSON: the architecture and whether it needs the folder's code."""

    path: Path
    architecture: str
    model_type: str | None
    remote_code: bool
    weights: str  # model.safetensors or model.safetensors.index.json


def resolve(ref: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``ref``: a path, or ``hf-hub:ORG/NAME[@REV]`` found in the hub's local cache (never
    downloaded; ``cache_dir`` defaults to the hub's, ``HF_HUB_CACHE``)."""
    text = str(ref)
    if not text.startswith(HUB_PREFIX):
        return Path(text).expanduser()
    repo, _, revision = text[len(HUB_PREFIX):].partition("@")
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise MissingExtraError("hf-hub: language models need huggingface_hub: pip install 'flatrob[hub]'") from None
    try:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision or None, cache_dir=cache_dir,
                                                      local_files_only=True))
    except (errors.LocalEntryNotFoundError, errors.HFValidationError, FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"{text} is not in the local hub cache ({' '.join(str(exc).split())[:160]}); flatrob "
                              "reads language models from the cache only: download the folder once with hf download"
                              ) from None


def read_folder(path: str | Path) -> FolderConfig:
    """Check a model folder from its files alone (nothing imported): a ``*ForCausalLM``, safetensors weights."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{path} is not a folder; a language model is a Hugging Face folder with config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json; give the folder a Hugging Face model was saved to")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object")
    architectures = config.get("architectures") or []
    if not (isinstance(architectures, list) and architectures and isinstance(architectures[0], str)):
        raise CheckpointError(f"{config_file} names no architecture ('architectures': [...ForCausalLM])")
    architecture = architectures[0]
    if not architecture.endswith(("ForCausalLM", "LMHeadModel")):
        raise CheckpointError(f"{folder} holds a {architecture}, not a causal language model (*ForCausalLM)")
    weights = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        pickled = " (pytorch_model.bin is a pickle flatrob never reads)" \
            if (folder / "pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json{pickled}; "
                              "save the model with safe_serialization (save_pretrained does by default)")
    model_type = config.get("model_type")
    return FolderConfig(folder, architecture, model_type if isinstance(model_type, str) else None,
                        "auto_map" in config, weights)


def is_causal_lm_folder(path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names a causal LM (for dispatching a model argument;
    :func:`read_folder` says what else is wrong with it)."""
    try:
        config = json.loads((resolve(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, TypeError, UnicodeDecodeError, json.JSONDecodeError, CheckpointError, MissingExtraError):
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return bool(names) and isinstance(names, list) and str(names[0]).endswith(("ForCausalLM", "LMHeadModel"))


def needs_trust(folder: FolderConfig) -> str | None:
    """Why loading ``folder`` would run code it ships (``auto_map``, an architecture transformers lacks), or None.

    Reads transformers' own table of causal LMs; imports nothing from the folder.
    """
    if folder.remote_code:
        return f"{folder.path}/config.json asks for code shipped with the model (auto_map)"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    known = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if folder.model_type not in known or folder.architecture not in set(known.values()):
        return (f"{folder.path} holds a {folder.architecture} (model_type {folder.model_type!r}) that transformers "
                "does not ship")
    return None


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("language models need transformers: pip install 'flatrob[llm]'") from None
    return transformers


def _dtype_keyword(transformers) -> str:
    """``dtype`` (transformers >= 4.56) or ``torch_dtype`` (before): what ``from_pretrained`` calls it."""
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_folder(path: str | Path, *, dtype: str = "fp32", device: torch.device = torch.device("cpu"),
                trust_embedded_code: bool = False):
    """``(model, tokenizer, folder)`` from a Hugging Face folder, in eval mode on ``device``.

    Refused before anything is imported: a folder that is not a causal LM or has no safetensors weights. A
    folder that needs its own code is refused before ``transformers`` could import it, unless
    ``trust_embedded_code``.
    """
    if dtype not in DTYPES:
        raise OptionError("dtype", f"{{}} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = read_folder(resolve(path))
    if not trust_embedded_code and folder.remote_code:
        raise CheckpointError(f"{needs_trust(folder)}; flatrob runs no code from a checkpoint unless "
                              "trust_embedded_code is given")
    transformers = _transformers()
    why = needs_trust(folder)
    if why is not None and not trust_embedded_code:
        raise CheckpointError(f"{why}; flatrob runs no code from a checkpoint unless trust_embedded_code is given")
    options = dict(local_files_only=True, trust_remote_code=trust_embedded_code)
    transformers.utils.logging.disable_progress_bar()  # stderr carries flatrob's own progress only

    def check(event: str, args: tuple) -> str | None:
        return (f"loading {folder.path} tried to open a network connection ({event}); flatrob never downloads "
                "a model") if event in NETWORK_EVENTS else None

    with refusing(check, CheckpointError):
        try:
            precision = {_dtype_keyword(transformers): DTYPES[dtype]}
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder.path, use_safetensors=True, attn_implementation="eager", **precision, **options)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder.path, **options)
        except (OSError, ValueError, KeyError) as exc:
            words = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"cannot load {folder.path}: {words}") from None
    return model.to(device).eval(), tokenizer, folder
