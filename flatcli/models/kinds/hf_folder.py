"""Reading a causal language model from a Hugging Face folder or one safetensors file: no download, no remote code.

A folder (or ``hf-hub:ORG/NAME[@REV]``, a folder of the hub's local cache) holds ``config.json``
(``architectures`` naming a ``*ForCausalLM``), the weights as
``model.safetensors`` or shards listed in ``model.safetensors.index.json``, and the tokenizer's files. A single
``.safetensors`` file comes with its ``config.json`` (``config``) and its tokenizer (``tokenizer``: a folder, or
a ``tokenizer.json``); they are linked into a temporary folder laid out as ``save_pretrained`` lays one out, so
both load through the same ``from_pretrained`` call and give the same numbers. A safetensors file that holds a
causal LM's weights (:func:`holds_lm_weights`) is recognised from its header alone.
Everything is checked from the files before ``transformers`` is imported: a config that asks for code of its
own (``auto_map``) is refused unless ``trust_embedded_code``; an architecture ``transformers`` does not ship
is refused likewise (its class could only come from the folder's code). ``pytorch_model.bin`` is never read
(it is a pickle). Loading runs with ``local_files_only=True`` and ``use_safetensors=True`` under the audit
hook that refuses network connections, with eager attention (the same numbers on every device).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from flatcli.errors import CheckpointError, MissingExtraError, OptionError, literal
from flatcli.inputs.audit import NETWORK_EVENTS, refusing

#: ``--dtype`` names and the torch dtypes the weights are loaded in.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
HUB_PREFIX = "hf-hub:"
#: How the architecture of a causal LM ends (``LlamaForCausalLM``, ``GPT2LMHeadModel``).
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: Tensor names of the input embeddings of transformers' causal LMs (Llama-style, GPT-2).
LM_EMBEDDINGS = ("embed_tokens.weight", "transformer.wte.weight")
#: Files read beside a ``tokenizer.json`` given alone (its special tokens, its class).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class FolderConfig:
    """What ``config.json`` says, read as plain JSON: the architecture and whether it needs code of its own; and
    where the model lies (``path``: its folder, or its single weights file)."""

    path: Path
    architecture: str
    model_type: str | None
    remote_code: bool
    weights: str  # model.safetensors or model.safetensors.index.json in a folder; the file's name for a single file
    config_file: Path


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
    weights = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        pickled = " (pytorch_model.bin is a pickle flatrob never reads)" \
            if (folder / "pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json{pickled}; "
                              "save the model with safe_serialization (save_pretrained does by default)")
    return _read_config(config_file, folder, weights, what=str(folder))


def read_single(weights: str | Path, config: str | Path) -> FolderConfig:
    """Check a single ``.safetensors`` file of a causal LM and its ``config.json`` (``config``) from the files
    alone, as :func:`read_folder` checks a folder."""
    weights, config_file = Path(weights).expanduser(), Path(config).expanduser()
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise CheckpointError(f"{weights} is not a .safetensors file; a language model's config file goes with "
                              "its safetensors weights (a folder needs no config file)")
    if not config_file.is_file():
        raise OptionError("config", "{}" + literal(f" {config} is not a file; give the model's config.json"))
    return _read_config(config_file, weights, weights.name, what=str(weights))


def _read_config(config_file: Path, path: Path, weights: str, *, what: str) -> FolderConfig:
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
    if not architecture.endswith(CAUSAL_SUFFIXES):
        raise CheckpointError(f"{what} holds a {architecture}, not a causal language model (*ForCausalLM)")
    model_type = config.get("model_type")
    return FolderConfig(path, architecture, model_type if isinstance(model_type, str) else None,
                        "auto_map" in config, weights, config_file)


def holds_lm_weights(path) -> bool:
    """Whether ``path`` is a ``.safetensors`` file whose tensor names are a causal LM's (``lm_head.weight``, an
    ``embed_tokens`` or GPT-2 ``wte`` embedding): read from the header alone."""
    from flatcli.inputs.checkpoint import read_header

    file = Path(str(path)).expanduser()
    if file.suffix != ".safetensors" or not file.is_file():
        return False
    try:
        names = read_header(file)
    except CheckpointError:
        return False
    return any(n == "lm_head.weight" or n.endswith(LM_EMBEDDINGS) for n in names)


def weight_files(path) -> list[Path] | None:
    """The weight files of a causal-LM folder, every shard in the index's order (``None`` if unreadable): what
    tells one checkpoint from another among several (:func:`flatcli.runs.many.plan_checkpoints` hashes them)."""
    try:
        folder = read_folder(resolve(path))
        files = [folder.path / folder.weights]
        if folder.weights.endswith(".index.json"):
            shards = json.loads(files[0].read_text(encoding="utf-8"))["weight_map"].values()
            files = [folder.path / name for name in dict.fromkeys(sorted(shards))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckpointError, MissingExtraError):
        return None
    return files


def is_causal_lm_folder(path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names a causal LM (for dispatching a model argument;
    :func:`read_folder` says what else is wrong with it)."""
    try:
        config = json.loads((resolve(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, TypeError, UnicodeDecodeError, json.JSONDecodeError, CheckpointError, MissingExtraError):
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return bool(names) and isinstance(names, list) and str(names[0]).endswith(CAUSAL_SUFFIXES)


def needs_trust(folder: FolderConfig) -> str | None:
    """Why loading ``folder`` would run code it ships (``auto_map``, an architecture transformers lacks), or None.

    Reads transformers' own table of causal LMs; imports nothing from the folder.
    """
    if folder.remote_code:
        return f"{folder.config_file} asks for code shipped with the model (auto_map)"
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


def tokenizer_files(tokenizer: str | Path) -> list[Path]:
    """What a ``tokenizer`` path makes flatrob read: a folder (as it is), or a ``tokenizer.json`` file and the
    :data:`TOKENIZER_SIDE_FILES` beside it."""
    path = Path(tokenizer).expanduser()
    if path.is_dir():
        return [path]
    if not path.is_file():
        raise OptionError("tokenizer", "{}" + literal(f" {tokenizer} is neither a folder nor a file; give the "
                                                      "tokenizer's folder or its tokenizer.json"))
    return [path, *(path.parent / name for name in TOKENIZER_SIDE_FILES if (path.parent / name).is_file())]


def model_files(path: str | Path, config: str | Path | None = None,
                tokenizer: str | Path | None = None) -> list[tuple[str, Path]]:
    """Every file or folder :func:`load_folder` reads for these arguments, with its role (``checkpoint``,
    ``config``, ``tokenizer``): the inputs of a run's output plan."""
    named = [("checkpoint", resolve(path))]
    if config is not None:
        named.append(("config", Path(config).expanduser()))
    return named + [("tokenizer", file) for file in (tokenizer_files(tokenizer) if tokenizer is not None else [])]


def _read_model(path, config, *, has_tokenizer: bool) -> FolderConfig:
    """:func:`read_folder` or, with ``config``, :func:`read_single` (which needs a tokenizer too); a causal LM's
    ``.safetensors`` without ``config`` is refused saying what is missing."""
    single = Path(str(path)).expanduser()
    if config is None:
        if single.is_file() and single.suffix == ".safetensors":
            needed = ("config",) if has_tokenizer else ("config", "tokenizer")
            what = "its config.json" + ("" if has_tokenizer else " and its tokenizer (folder or tokenizer.json)")
            raise OptionError(needed, " and ".join("{}" for _ in needed) + (" is" if has_tokenizer else " are") +
                              " needed" + literal(f": {path} holds a causal language model's weights alone; give "
                                                  f"{what}"))
        return read_folder(resolve(path))
    if single.is_dir():
        raise OptionError("config", "{}" + literal(f" goes with a single .safetensors file; the folder {path} has "
                                                   "its own config.json: drop it"))
    if not has_tokenizer:
        raise OptionError("tokenizer", "{}" + literal(f" is needed: {path} holds the weights alone; give the "
                                                      "tokenizer's folder or its tokenizer.json"))
    return read_single(path, config)


@contextlib.contextmanager
def _staged(folder: FolderConfig, tokenizer: str | Path | None) -> Iterator[tuple[Path, Path]]:
    """The folders ``from_pretrained`` reads the model and the tokenizer from: a folder as it is; for a single
    file, a temporary folder of links named as ``save_pretrained`` names them (``config.json``,
    ``model.safetensors``); a ``tokenizer.json`` likewise, with the model's ``config.json`` (which names the
    tokenizer's class when no ``tokenizer_config.json`` does) and the files beside it."""
    with tempfile.TemporaryDirectory(prefix="flatrob-lm-") as tmp:
        model_dir = folder.path
        if folder.path.is_file():
            model_dir = Path(tmp) / "model"
            model_dir.mkdir()
            (model_dir / "config.json").symlink_to(folder.config_file.resolve())
            (model_dir / WEIGHT_FILES[0]).symlink_to(folder.path.resolve())
        tokenizer_dir = model_dir
        if tokenizer is not None:
            files = tokenizer_files(tokenizer)
            tokenizer_dir = files[0]
            if files[0].is_file():
                tokenizer_dir = Path(tmp) / "tokenizer"
                tokenizer_dir.mkdir()
                (tokenizer_dir / "config.json").symlink_to(folder.config_file.resolve())
                (tokenizer_dir / "tokenizer.json").symlink_to(files[0].resolve())
                for side in files[1:]:
                    (tokenizer_dir / side.name).symlink_to(side.resolve())
        yield model_dir, tokenizer_dir


def load_folder(path: str | Path, *, config: str | Path | None = None, tokenizer: str | Path | None = None,
                dtype: str = "fp32", device: torch.device = torch.device("cpu"), trust_embedded_code: bool = False):
    """``(model, tokenizer, folder)`` from a Hugging Face folder, or from a single ``.safetensors`` file with its
    ``config`` (a ``config.json``) and ``tokenizer`` (a tokenizer folder, or a ``tokenizer.json`` with the
    ``tokenizer_config.json`` and ``special_tokens_map.json`` beside it, if any), in eval mode on ``device``.
    ``tokenizer`` also replaces a folder's own; a tokenizer object (not a path) is used as it is.

    Refused before anything is imported: a model that is not a causal LM or has no safetensors weights. A
    config that needs its own code is refused before ``transformers`` could import it, unless
    ``trust_embedded_code``.
    """
    if dtype not in DTYPES:
        raise OptionError("dtype", f"{{}} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    given = None if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    tokenizer = None if given is not None else tokenizer
    folder = _read_model(path, config, has_tokenizer=tokenizer is not None or given is not None)
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

    with refusing(check, CheckpointError), _staged(folder, tokenizer) as (model_dir, tokenizer_dir):
        try:
            precision = {_dtype_keyword(transformers): DTYPES[dtype]}
            model = transformers.AutoModelForCausalLM.from_pretrained(
                model_dir, use_safetensors=True, attn_implementation="eager", **precision, **options)
            tokenizer = given or transformers.AutoTokenizer.from_pretrained(tokenizer_dir, **options)
        except (OSError, ValueError, KeyError) as exc:
            words = " ".join(str(exc).split())[:300].replace(str(model_dir), str(folder.path))
            raise CheckpointError(f"cannot load {folder.path}: {words}") from None
    return model.to(device).eval(), tokenizer, folder
