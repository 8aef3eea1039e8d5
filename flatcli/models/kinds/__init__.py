"""Model kinds: for each kind of model, how a batch becomes logits, head features and labels.

:class:`~flatcli.models.kinds.base.ModelKind` is the seam; :data:`KINDS` names its implementations. Image
classifiers (:class:`~flatcli.models.kinds.image.ImageClassifier`, one row per image) wrap the
:class:`~flatcli.models.head.HeadSplit` of a :class:`~flatcli.models.loading.LoadedModel`; causal language
models (:class:`~flatcli.models.kinds.causal_lm.CausalLM`, one row per token position) wrap a
``transformers`` model and its tokenizer. Either way the head's features flatten to (N, m), so the closed
forms of :mod:`flatcli.core.curvature` apply unchanged.
"""

from flatcli.models.kinds.base import HeadBatch, ModelKind
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.models.kinds.image import ImageClassifier

#: Every kind of model, by the name its ``describe_inputs()`` reports.
KINDS: dict[str, type[ModelKind]] = {kind.name: kind for kind in (ImageClassifier, CausalLM)}

__all__ = ["HeadBatch", "ModelKind", "KINDS", "CausalLM", "ImageClassifier"]
