"""Prompts as data (``prompts:FILE``) and how a prompt becomes token ids: before, suffix, after, target.

A file is a CSV in AdvBench's layout (columns ``goal,target``; others ignored) or JSONL, one object a line:
``goal``, ``target``, optional ``suffix`` (the suffix to measure, and GCG's starting point) and optional
``messages`` (a chat, ``[{"role": ..., "content": ...}]``, holding the placeholder ``{optim_str}`` once,
where the suffix goes). Without ``messages`` the chat is one user turn, ``goal + "{optim_str}"`` (nanoGCG's
convention: the suffix's own tokens carry its leading space), after a system turn when a system prompt is
given.

A chat template (``auto``: the tokenizer's own; ``none``: the system prompt and user turns as plain text, one
a line; ``vicuna``, ``llama-2``: the fastchat conversation templates the paper's authors used, shipped as
Jinja files since those checkpoints carry none; or a ``.jinja`` file) renders the chat with the generation prompt; the text is
split at the placeholder and each part tokenized alone, as GCG does, so a suffix is a list of token ids that
never merges with its neighbours. The target follows the generation prompt, after a space when the prompt
ends in a non-space character (``ASSISTANT:``, ``[/INST]``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flatcli.errors import DataError, OptionError

PREFIX = "prompts:"
PLACEHOLDER = "{optim_str}"
#: Chat templates by name besides a ``.jinja`` file: the tokenizer's, plain text, and the shipped ones.
TEMPLATES = ("auto", "none", "vicuna", "llama-2")
SHIPPED = ("vicuna", "llama-2")


@dataclass(frozen=True)
class Prompt:
    """One prompt: the request, the target the model should answer with, an optional suffix and chat."""

    goal: str
    target: str
    suffix: str = ""
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Layout:
    """A prompt's token ids in four parts: ``before`` the suffix, the ``suffix``, ``after`` it, the ``target``."""

    before: tuple[int, ...]
    suffix: tuple[int, ...]
    after: tuple[int, ...]
    target: tuple[int, ...]

    @property
    def target_start(self) -> int:
        """Index of the first target token in :meth:`ids`."""
        return len(self.before) + len(self.suffix) + len(self.after)

    def ids(self, suffix: tuple[int, ...] | list[int] | None = None) -> list[int]:
        """The whole sequence, with another suffix of the same length when given."""
        return [*self.before, *(self.suffix if suffix is None else suffix), *self.after, *self.target]

    def prompt_ids(self, suffix: tuple[int, ...] | list[int] | None = None) -> list[int]:
        """The sequence up to the target (what a model is asked), with another suffix when given."""
        return [*self.before, *(self.suffix if suffix is None else suffix), *self.after]


def prompts_path(data: str) -> Path | None:
    """The file of a ``prompts:FILE`` data source, or None for another source."""
    return Path(data[len(PREFIX):]).expanduser() if data.startswith(PREFIX) else None


def read_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """The prompts of a ``.csv`` (``goal,target``) or ``.jsonl`` file, at most ``limit`` of them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist; give a CSV with goal,target columns or a JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {path}: {exc}") from None
    prompts = _read_jsonl(path, text) if path.suffix in (".jsonl", ".json") else _read_csv(path, text)
    if not prompts:
        raise DataError(f"prompts file {path} holds no prompt")
    return prompts[:limit] if limit else prompts


def _read_csv(path: Path, text: str) -> list[Prompt]:
    reader = csv.DictReader(text.splitlines())
    missing = {"goal", "target"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; a prompts CSV has goal,target "
                        "(AdvBench's harmful_behaviors.csv layout)")
    return [Prompt(row["goal"] or "", row["target"] or "") for row in reader]


def _read_jsonl(path: Path, text: str) -> list[Prompt]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("target"), str):
            raise DataError(f"{where} needs an object with a string 'target' (and 'goal' or 'messages')")
        messages = row.get("messages")
        if messages is not None:
            messages = _messages(where, messages)
        elif not isinstance(row.get("goal"), str):
            raise DataError(f"{where} needs a string 'goal' (or 'messages' holding {PLACEHOLDER})")
        suffix = row.get("suffix", "")
        if not isinstance(suffix, str):
            raise DataError(f"{where}: 'suffix' must be a string")
        out.append(Prompt(row.get("goal") or "", row["target"], suffix, messages))
    return out


def _messages(where: str, messages) -> tuple[dict, ...]:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise DataError(f"{where}: 'messages' must be a list of {{\"role\": str, \"content\": str}}")
    if sum(m["content"].count(PLACEHOLDER) for m in messages) != 1:
        raise DataError(f"{where}: 'messages' must hold the placeholder {PLACEHOLDER} exactly once")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def template_source(name: str, tokenizer) -> str | None:
    """The Jinja source of chat template ``name`` (None for ``none``)."""
    if name == "none":
        return None
    if name == "auto":
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise OptionError("chat_template", "the tokenizer has no chat template of its own; give {} none, "
                              "vicuna, llama-2 or a .jinja file")
        return source
    if name in SHIPPED:
        return (resources.files("flatcli.inputs.data") / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
    path = Path(name).expanduser()
    if path.suffix != ".jinja" or not path.is_file():
        raise OptionError("chat_template", f"{{}} must be one of {', '.join(TEMPLATES)} or an existing .jinja file, "
                          f"got {name!r}")
    return path.read_text(encoding="utf-8")


def chat(prompt: Prompt, system: str | None) -> list[dict]:
    """The prompt's chat, with the placeholder where the suffix goes and the system prompt first when given."""
    messages = list(prompt.messages or [{"role": "user", "content": prompt.goal + PLACEHOLDER}])
    if system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render(source: str | None, messages: list[dict], tokenizer) -> str:
    """The chat as text up to the generation prompt (``none``: the system and user turns, joined by newlines)."""
    if source is None:
        return "\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(source).render(messages=messages, add_generation_prompt=True,
                                              bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    except TemplateError as exc:
        raise OptionError("chat_template", f"the chat template of {{}} fails: {exc}") from None


def _halves(prompt: Prompt, tokenizer, template: str, system: str | None) -> tuple[str | None, str, str]:
    """The template's source and the rendered chat's text before and after the suffix placeholder."""
    source = template_source(template, tokenizer)
    text = render(source, chat(prompt, system), tokenizer)
    if text.count(PLACEHOLDER) != 1:
        raise OptionError("chat_template", f"the chat template of {{}} must render the user turn once (found "
                          f"{text.count(PLACEHOLDER)} suffix placeholders)")
    before, after = text.split(PLACEHOLDER)
    return source, before, after


def _ids(tokenizer, part: str, special: bool = False) -> tuple[int, ...]:
    # Without a template the tokenizer adds its own special tokens (BOS); templates write theirs as text.
    return tuple(tokenizer(part, add_special_tokens=special)["input_ids"]) if part else ()


def layout(prompt: Prompt, tokenizer, template: str = "auto", system: str | None = None,
           suffix: str | None = None) -> Layout:
    """``prompt`` as token ids around its suffix (``suffix`` overrides the prompt's own)."""
    source, before, after = _halves(prompt, tokenizer, template, system)
    target = prompt.target if not (before + after) or (before + after)[-1:].isspace() else " " + prompt.target
    suffix_text = prompt.suffix if suffix is None else suffix
    return Layout(_ids(tokenizer, before, special=source is None), _ids(tokenizer, suffix_text),
                  _ids(tokenizer, after), _ids(tokenizer, target))


def user_start(prompt: Prompt, tokenizer, template: str = "auto", system: str | None = None) -> int:
    """Index in :attr:`Layout.before` of the first token of the user's text before the suffix (the goal).

    That text is the content before the placeholder of the turn holding it (``goal`` without ``messages``); the
    tokens before it are the system prompt and the template's. The index is the length of the common prefix of
    the tokens of the text before the suffix and of the same text without the user's part, so a token that merges
    the template's last characters with the user's first counts as the user's. :class:`OptionError`
    (``chat_template``) when the template does not render the user's text verbatim.
    """
    source, before, _ = _halves(prompt, tokenizer, template, system)
    user = next(m["content"] for m in chat(prompt, system) if PLACEHOLDER in m["content"]).split(PLACEHOLDER)[0]
    if not before.endswith(user):
        raise OptionError("chat_template", "the chat template of {} does not render the user's text verbatim, so "
                          "its tokens cannot be told from the template's; use another template")
    whole = _ids(tokenizer, before, special=source is None)
    head = _ids(tokenizer, before[: len(before) - len(user)], special=source is None)
    common = 0
    while common < min(len(whole), len(head)) and whole[common] == head[common]:
        common += 1
    return common
