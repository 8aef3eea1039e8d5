"""``flatrob detect MODEL --data prompts:FILE --attack gcg``: detectors of GCG suffixes, with the perplexity filter beside them.

GCG (:func:`flatcli.runs.lm_attack.lm_attack`) crafts a suffix per prompt; then each prompt is measured twice,
clean (no suffix) and adversarial (its final suffix), on the prompt alone (up to the generation prompt, no
target: a detector sees no target), one forward pass each (:func:`flatcli.core.token_curvature.prompt_means`)
on the span of the user's text and the suffix (:func:`flatcli.inputs.data.prompts.user_start`: the goal and
the suffix, never the system prompt nor the template's tokens):

* ``log_perplexity``: the mean negative log-likelihood of the span's tokens, each given every token before it,
  the perplexity filter of Jain et al. (2023) and Alon & Kamfonas (2023), the field's baseline;
* ``trace_h_prompt``: the mean head curvature ``sum_j p_j (1 - p_j) ||phi||^2`` at the positions that predict
  the span's tokens (the same positions);
* ``trace_h_last``: the head curvature at the last position, the one that predicts the answer.

The detectors are fitted and cross-validated by :func:`flatcli.runs.detect.fit_detection`, the image
``detect``'s code path: the stump on the chosen score (default ``trace_h_prompt``, the first of
:data:`~flatcli.core.detectors.PROMPT_SCORES`) and, on the same folds,
the stump on ``log_perplexity`` as ``baseline``. The adversarial class's "prediction" is GCG's success
(greedy decoding reproduces the target), so ``n_successful``/``prediction_changed`` count successful suffixes
and ``only_successful`` keeps those. ``auroc`` gives each feature's AUROC as a raw score (higher = adversarial;
below 0.5 the feature falls on adversarial prompts), before any fit.

``save`` writes the fitted detector with its provenance in ``meta`` (the model's ``weights_sha256``, chat
template and system prompt); :func:`lm_apply` applies it to prompts as they are (each with its own ``suffix``),
refusing another model (unless ``force``) or another template or system prompt.
"""

from __future__ import annotations

import numpy as np
import torch

from flatcli.core.detectors import PROMPT_SCORES, Detector, roc_summary
from flatcli.core.token_curvature import prompt_means
from flatcli.errors import DetectorError, OptionError, literal
from flatcli.inputs.data.prompts import Layout, Prompt, layout, user_start
from flatcli.inputs.detector_file import save_detector
from flatcli.models.kinds.causal_lm import CausalLM
from flatcli.models.loading import weights_sha256
from flatcli.options.attack import AttackOptions
from flatcli.options.lm import GCGOptions, PromptOptions, TokenHeadOptions
from flatcli.runs.detect import APPLY_ROW_KEYS, DetectSettings, applied_summary, fit_detection
from flatcli.runs.detect_scores import ScoreSet
from flatcli.runs.lm_attack import lm_attack
from flatcli.runs.lm_sharpness import effective_template
from flatcli.runs.result import OnRows, Result, Rows
from flatcli.runtime.loop import Progress

#: Label-free measures of a prompt, each a detection score.
FEATURES = PROMPT_SCORES
#: The score of the baseline: the perplexity filter.
BASELINE = "log_perplexity"
#: Keys of the rows: one clean and one adversarial row per prompt, in prompt order.
ROW_KEYS = ("index", "adversarial", "input_ids", "span", *FEATURES, "fold", "score", "oof_decision", "flagged",
            "baseline_oof_decision", "baseline_flagged")
#: What the config says of the language-model fit, beyond the image detect's conventions.
CONVENTIONS = {
    "span": "log_perplexity and trace_h_prompt cover the tokens [span[0], span[1]) of input_ids: the user's text "
            "before the suffix and the suffix, each predicted from every token before it (system prompt and "
            "template tokens are context, never measured); trace_h_last is the trace at the last position",
    "clean": "the prompt without a suffix; adversarial: with its final GCG suffix",
    "baseline": "the perplexity filter (Jain et al. 2023; Alon & Kamfonas 2023): a stump on log_perplexity on the "
                "same balanced inputs and folds",
    "prediction_changed": "share of adversarial prompts whose suffix makes greedy decoding reproduce the target",
    "auroc": "ROC-AUC of each raw feature (higher = adversarial) on every clean and adversarial prompt, no fit",
}


def prompt_row(kind: CausalLM, lay: Layout, start: int, suffix: tuple[int, ...]) -> dict:
    """``input_ids``, ``span`` and :data:`FEATURES` of a prompt laid out as ``lay`` with ``suffix``, from one forward
    pass; ``start`` is :func:`~flatcli.inputs.data.prompts.user_start` (the span ends with the suffix)."""
    ids = lay.prompt_ids(suffix)
    span = (max(1, start), len(lay.before) + len(suffix))
    x = torch.tensor([ids])
    with torch.no_grad():
        phi = kind.features(x.to(kind.device))
    means = prompt_means(phi, *kind.closed_form_head(), x, span)
    return {"input_ids": ids, "span": list(span), **{k: v[0].item() for k, v in means.items()}}


def lm_detect(kind: CausalLM, prompts: list[Prompt], settings: DetectSettings, *, data: str = "prompts",
              attack: AttackOptions = AttackOptions(), gcg: GCGOptions = GCGOptions(),
              prompt: PromptOptions = PromptOptions(), head: TokenHeadOptions = TokenHeadOptions(), seed: int = 0,
              save: str | None = None, on_rows: OnRows | None = None, keep_samples: bool = False,
              progress: Progress | None = None) -> Result:
    """GCG suffixes for ``prompts``, the features of each prompt clean and adversarial, and the detector of
    ``settings`` (``language=True``) cross-validated beside the perplexity filter; rows (:data:`ROW_KEYS`) go to
    ``on_rows`` and are kept with ``keep_samples``; the fitted detector is ``artifacts["detector"]``, written to
    ``save``."""
    crafted = lm_attack(kind, prompts, data=data, attack=attack, gcg=gcg, prompt=prompt, head=head, seed=seed,
                        progress=progress)
    template = effective_template(kind, prompt.chat_template)
    measured: dict[bool, list[dict]] = {False: [], True: []}
    for index, (p, result) in enumerate(zip(prompts, crafted.summary["prompts"])):
        lay = layout(p, kind.tokenizer, template, prompt.system, suffix="")
        start = user_start(p, kind.tokenizer, template, prompt.system)
        for adversarial, suffix in ((False, ()), (True, tuple(result["suffix_ids"]))):
            measured[adversarial].append({"index": index, "adversarial": adversarial,
                                          **prompt_row(kind, lay, start, suffix)})
    success = np.array([r["success"] for r in crafted.summary["prompts"]], dtype=np.int64)
    sets = {adversarial: ScoreSet(np.arange(len(prompts)), success if adversarial else np.zeros_like(success),
                                  {k: np.array([r[k] for r in measured[adversarial]], dtype=np.float64)
                                   for k in FEATURES})
            for adversarial in (False, True)}
    outcome = fit_detection(sets[False], sets[True], settings, seed=seed, baseline=BASELINE)
    rows = Rows(on_rows, keep_samples)
    rows(paired_rows(measured, outcome))
    labels = np.repeat([0, 1], len(prompts))
    base = outcome.baseline
    threshold, direction = base.detector.operating_point()
    summary = {"n": len(prompts), "attack_success_rate": crafted.summary["success_rate"],
               "final_loss_mean": crafted.summary["final_loss_mean"], **outcome.summary,
               "baseline": {**outcome.summary["baseline"], "threshold": threshold, "direction": direction},
               "auroc": {k: roc_summary(labels, np.concatenate([sets[False].values[k], sets[True].values[k]]))[0]
                         for k in FEATURES}}
    config = {**crafted.config, **{k: v for k, v in settings.config().items() if k in (
        "mode", "method", "score", "folds", "only_successful")}, "save": save, "conventions": CONVENTIONS}
    det = outcome.detector
    det.meta.update({"checkpoint": crafted.config["checkpoint"], "weights_sha256": weights_sha256(kind.model),
                     "chat_template": template, "system": prompt.system, "data": data, "attack": "gcg",
                     "steps": crafted.config["steps"], "only_successful": settings.only_successful})
    if save is not None:
        save_detector(save, det)
    return Result("detect", config, summary, rows.kept, artifacts={"detector": outcome.detector, "outcome": outcome},
                  notes=crafted.notes)


def paired_rows(measured: dict[bool, list[dict]], outcome) -> list[dict]:
    """One clean and one adversarial row per prompt: the features, and the fit's fold, out-of-fold decision and
    verdict (:data:`flatcli.runs.detect.FIT_ROW_KEYS`), with the baseline's out-of-fold decision (by the detector
    of the same fold: both were cross-validated on the same folds) and its final detector's verdict."""
    fitted = {(r["adversarial"], r["index"]): r for r in outcome.rows}
    base = outcome.baseline
    out = []
    for index in range(len(measured[False])):
        for adversarial in (False, True):
            row, fit = measured[adversarial][index], fitted[(adversarial, index)]
            value = np.array([row[base.detector.score]])
            base_oof = float(base.fold_detectors[fit["fold"]].decision(value)[0]) if fit["used"] else None
            row = {**row, **{k: fit[k] for k in ("fold", "score", "oof_decision", "flagged")},
                   "baseline_oof_decision": base_oof, "baseline_flagged": bool(base.detector.predict(value)[0])}
            out.append({k: row[k] for k in ROW_KEYS})
    return out


def lm_apply(kind: CausalLM, prompts: list[Prompt], det: Detector, *, data: str = "prompts",
             prompt: PromptOptions = PromptOptions(), detector_path: str | None = None, force: bool = False,
             on_rows: OnRows | None = None, keep_samples: bool = False) -> Result:
    """Flag each prompt as it is (its own ``suffix``, if any) with a detector fitted by :func:`lm_detect`: rows
    ``index, score, flagged`` and :func:`flatcli.runs.detect.applied_summary`. :class:`DetectorError` for a
    detector of images, or of another model (unless ``force``); :class:`OptionError` (``chat_template``,
    ``system``) when the prompts would be laid out otherwise than the detector's were."""
    template = effective_template(kind, prompt.chat_template)
    notes = check_prompt_detector(det, kind, template, prompt.system, force=force)
    rows = Rows(on_rows, keep_samples)
    values, flagged = [], []
    for index, p in enumerate(prompts):
        lay = layout(p, kind.tokenizer, template, prompt.system)
        value = np.array([prompt_row(kind, lay, user_start(p, kind.tokenizer, template, prompt.system),
                                     lay.suffix)[det.score]])
        values.append(float(value[0]))
        flagged.append(bool(det.decision(value)[0] > 0))
        rows([dict(zip(APPLY_ROW_KEYS, (index, values[-1], flagged[-1])))])
    config = {**kind.describe(), "data": data, "chat_template": template, "system": prompt.system, "mode": "apply",
              "detector": detector_path, "force": force, "method": det.method, "score": det.score,
              "conventions": {"span": CONVENTIONS["span"]}}
    summary = applied_summary(det, np.array(values), sum(flagged), not notes)
    return Result("detect", config, summary, rows.kept, notes=notes)


def check_prompt_detector(det: Detector, kind: CausalLM, template: str, system: str | None, *,
                          force: bool = False) -> list[str]:
    """Refuse a detector that does not threshold a prompt score, one fitted on another model (identified by
    ``weights_sha256``; with ``force`` a note instead), and one whose prompts were laid out with another chat
    template or system prompt. Returns the notes."""
    if det.score not in PROMPT_SCORES:
        raise DetectorError(f"the detector thresholds {det.score} of an image classifier, not a score of prompts "
                            f"({', '.join(PROMPT_SCORES)}); fit one with `flatrob detect MODEL --data prompts:FILE "
                            "--attack gcg --save FILE`")
    want, have = det.meta.get("weights_sha256"), weights_sha256(kind.model)
    notes = []
    if want != have:
        what = (f"was fitted on {det.meta.get('checkpoint', '?')} (weights sha256 {str(want)[:12]}...), not on "
                f"{kind.source} (weights sha256 {have[:12]}...)")
        if not force:
            raise DetectorError(f"the detector {what}; its threshold means nothing for another model. Fit one for "
                                "this model, or pass --force to apply it anyway")
        notes.append(f"note: --force: the detector {what}")
    for option, mine in (("chat_template", template), ("system", system)):
        theirs = det.meta.get(option)
        if theirs != mine:
            raise OptionError(option, f"{{}} {literal(repr(mine))} lays the prompts out otherwise than the "
                              f"detector's {literal(repr(theirs))}; give the detector's")
    return notes
