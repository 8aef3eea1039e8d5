"""Causal language models as a model kind: one row per token position, token ids perturbed.

The head is the output projection (``lm_head``: k = vocabulary, m = hidden size); ``phi_t``, the input of
the head at position t (after the final norm), is captured by a hook during the model's own forward pass, and
the label of position t is the token at t + 1. A model whose logits are not the head's output (Gemma's
soft-capping, Cohere's logit scale) breaks the closed form: the first forward pass compares the head's output
with the model's logits and refuses such a model (:class:`LayerError`). Every later pass stops where the head
would start (a pre-hook raises :class:`_HeadReached` with its input): the closed forms recompute the logits
they need in float64, so the model's own float32 logits, k x m per position, often the largest cost of a
pass, are never computed. A head tied to the input embeddings is measured as its own variable (the paper's
split, features fixed); :attr:`tied` says so.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os

import torch
from torch import Tensor, nn

from flatcli.errors import LayerError, OptionError
from flatcli.models.kinds.base import HeadBatch, ModelKind

#: |head(phi) - logits| allowed, in units of the dtype's eps times max(1, max |logits|).
TRANSFORM_ULPS = 4


class CausalLM(ModelKind):
    """A ``transformers`` causal LM and its tokenizer, seen through the head."""

    name = "causal-lm"
    perturbs = "tokens"

    def __init__(self, model: nn.Module, tokenizer=None, *, source: str | None = None):
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise LayerError(f"the model's output embeddings are a {type(head).__name__}, not an nn.Linear head")
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self._head = head
        self._verified = False
        self._head64: tuple[Tensor, Tensor | None] | None = None  # closed_form_head(), made on first use

    @classmethod
    def from_folder(cls, path, *, config=None, tokenizer=None, dtype: str = "fp32",
                    device: torch.device = torch.device("cpu"), trust_embedded_code: bool = False) -> "CausalLM":
        """The model and tokenizer of a Hugging Face folder, or of a single ``.safetensors`` file with its
        ``config`` and ``tokenizer`` (:func:`flatcli.models.kinds.hf_folder.load_folder`)."""
        from flatcli.models.kinds.hf_folder import load_folder

        model, tokenizer, folder = load_folder(path, config=config, tokenizer=tokenizer, dtype=dtype, device=device,
                                               trust_embedded_code=trust_embedded_code)
        return cls(model, tokenizer, source=str(folder.path))

    @classmethod
    def open(cls, model, tokenizer=None, *, config=None, dtype: str = "fp32",
             device: torch.device = torch.device("cpu"), trust_embedded_code: bool = False) -> "CausalLM":
        """A folder path or single ``.safetensors`` file with its ``config`` (loaded; ``tokenizer`` a path or a
        tokenizer object), or an in-memory ``transformers`` causal LM with its ``tokenizer`` object (used as it
        is, in eval mode; ``dtype``/``device`` apply to files only)."""
        if isinstance(model, nn.Module):
            if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
                raise OptionError("tokenizer", "an in-memory language model needs its tokenizer object: give {}")
            if config is not None:
                raise OptionError("config", "{} describes a .safetensors file; an in-memory model has its own")
            return cls(model.eval(), tokenizer, source=f"in-memory {type(model).__name__}")
        return cls.from_folder(model, config=config, tokenizer=tokenizer, dtype=dtype, device=device,
                               trust_embedded_code=trust_embedded_code)

    @property
    def head(self) -> nn.Linear:
        return self._head

    def closed_form_head(self) -> tuple[Tensor, Tensor | None]:
        """The head's weight and bias as the float64 closed forms read them (:mod:`flatcli.core.token_curvature`):
        float64 copies, made once per run, when the weight fits one chunk's budget
        (:data:`~flatcli.core.token_curvature.CHUNK_VALUES` values), else the head's own tensors, converted chunk by
        chunk. Converting a 32000 x 256 head per prompt costs about a third of the closed form of a 64-token prompt."""
        if self._head64 is None:
            from flatcli.core.token_curvature import CHUNK_VALUES

            weight, bias = self._head.weight.detach(), self._head.bias
            if weight.numel() <= CHUNK_VALUES:
                weight, bias = weight.double(), None if bias is None else bias.detach().double()
            self._head64 = (weight, bias)
        return self._head64

    @property
    def tied(self) -> bool:
        """Whether the head shares its weight with the input embeddings."""
        embed = self.model.get_input_embeddings()
        return getattr(embed, "weight", None) is not None and embed.weight.data_ptr() == self._head.weight.data_ptr()

    @property
    def device(self) -> torch.device:
        return self._head.weight.device

    def features(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                 attention_mask: Tensor | None = None, past_key_values=None) -> Tensor:
        """``phi`` (B, L, m), the head's input, from one forward pass up to the head (after the cached tokens of
        ``past_key_values``, when given); the first pass runs the whole model and checks the head."""
        cache = {self._cache_keyword: past_key_values} if past_key_values is not None else {}
        inputs = dict(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      use_cache=past_key_values is not None, **cache)
        if not self._verified:
            return self._whole_pass(inputs)[0]

        def stop(module, args):
            raise _HeadReached(args[0])

        handle = self._head.register_forward_pre_hook(stop)
        try:
            self.model(**inputs)
        except _HeadReached as reached:
            return reached.phi
        finally:
            handle.remove()
        raise LayerError("the model's forward pass never reached its head (get_output_embeddings())")

    def _whole_pass(self, inputs: dict):
        """The head's input and the model's output of a whole forward pass; the head must run once, and on the
        first such pass the model's logits must be the head's output."""
        captured: list[tuple[Tensor, Tensor]] = []
        handle = self._head.register_forward_hook(lambda module, args, out: captured.append((args[0], out)))
        try:
            output = self.model(**inputs)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise LayerError(f"the head ran {len(captured)} times in one forward pass; it must run exactly once")
        phi, out = captured[0]
        if not self._verified:
            self._check(out, output.logits)
            self._verified = True
        return phi, output

    def prefix(self, ids: Tensor) -> "CachedPrefix | None":
        """Token ids (P,) run once: their head features and key/value cache (:class:`flatcli.core.gcg.Prefix`);
        None when the model's cache cannot be copied for a batch (a legacy tuple cache)."""
        with torch.no_grad():  # one pass gives both
            phi, out = self._whole_pass({"input_ids": ids.to(self.device)[None], "use_cache": True})
        cache = out[self._cache_keyword]
        return CachedPrefix(int(ids.numel()), phi[0], cache) if hasattr(cache, "batch_repeat_interleave") else None

    @property
    def _cache_keyword(self) -> str:
        """What the model calls its key/value cache: ``cache`` (transformers >= 5.25) or ``past_key_values``."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _check(self, out: Tensor, logits: Tensor) -> None:
        if out.shape != logits.shape:
            raise LayerError(f"the model's logits {tuple(logits.shape)} are not its head's output {tuple(out.shape)}")
        with torch.no_grad():
            err = (out.double() - logits.double()).abs().max().item()
            scale = max(1.0, logits.detach().double().abs().max().item())
        if not err <= TRANSFORM_ULPS * torch.finfo(out.dtype).eps * scale:
            raise LayerError(f"the model transforms its head's output (logits differ from lm_head by {err:.3g}: "
                             "soft-capping or a logit scale); the closed form holds only for plain logits")

    def head_batch(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> HeadBatch:
        """Rows for every position of ``input_ids`` (B, L); labels the next tokens, ``-100`` at the end."""
        phi = self.features(input_ids, attention_mask=attention_mask)
        logits = self._head(phi)
        b, length = input_ids.shape
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:]
        if attention_mask is not None:
            labels[:, :-1][attention_mask[:, 1:] == 0] = -100
        owner = torch.arange(b, device=input_ids.device).repeat_interleave(length)
        return HeadBatch(logits.reshape(b * length, -1), phi.reshape(b * length, -1), labels.reshape(-1), owner)

    def describe(self) -> dict:
        """Provenance for the ``config`` of an output: where the model came from and what its head is."""
        import transformers

        return {"checkpoint": self.source, "architecture": type(self.model).__name__, **self.describe_inputs(),
                "transformers": transformers.__version__}

    def inspect(self) -> dict:
        """What ``flatrob inspect`` reports of a language model: :meth:`describe` and ``||W||_F`` of the head."""
        from flatcli.core.token_curvature import weight_norm_sq

        return {**self.describe(), "head_weight_norm": float(weight_norm_sq(self._head.weight)) ** 0.5}

    def fingerprint(self) -> dict:
        """What a stored result was computed with: the sha256 of every parameter and buffer (names, dtypes, shapes,
        bytes; a tied weight counted under each name) and of the tokenizer's vocabulary and special tokens. Reads
        every weight once (seconds per GB): only a ``resume`` store asks for it."""
        model = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            model.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
            model.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        vocabulary = sorted(self.tokenizer.get_vocab().items())
        special = sorted(map(str, self.tokenizer.all_special_tokens))
        words = hashlib.sha256(json.dumps([vocabulary, special]).encode()).hexdigest()
        return {"model_sha256": model.hexdigest(), "tokenizer_sha256": words}

    def describe_inputs(self) -> dict:
        head = self._head
        return {"kind": self.name, "perturbs": self.perturbs, "vocabulary": head.out_features,
                "hidden": head.in_features, "tied": self.tied, "dtype": str(head.weight.dtype).removeprefix("torch."),
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}


class CachedPrefix:
    """Tokens run once: ``length``, their head features ``phi`` (length, m), and their key/value cache."""

    def __init__(self, length: int, phi: Tensor, cache):
        self.length, self.phi, self._cache = length, phi, cache

    def cache(self, b: int):
        """A fresh copy of the cache for a batch of ``b`` sequences (the model appends to what it is given)."""
        fresh = copy.deepcopy(self._cache)
        if b > 1:
            fresh.batch_repeat_interleave(b)
        return fresh


class _HeadReached(Exception):
    """Raised by the head's pre-hook to end a forward pass where the head would start, carrying its input."""

    def __init__(self, phi: Tensor):
        super().__init__("the head's input")
        self.phi = phi
