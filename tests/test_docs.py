"""The manual against the code: every command and option of the live CLI documented, every example valid,
every Python example run, and the MkDocs site built with ``--strict``.

The command tree is read from the live Typer app (never a list kept here), so a command or an option added
anywhere fails these tests until the page of its command (or a page of shared options) names it. It is read
through typer's public names: typer vendors click since 0.26, and the ``click`` package, where installed (for
mkdocs), is another library whose classes and exceptions are not typer's.
The Python example marked ``api-example`` in docs/api.md is run by tests/test_api.py, which also compares it
with the CLI; every other Python block of the README and the pages is run here.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.core import TyperCommand, TyperGroup

from flatcli.cli import app
from tests.conftest import load_generate_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Pages that document options shared by several commands; an option named on one counts for every command.
SHARED_PAGES = ("options.md", "many-checkpoints.md", "scale-out.md")
#: Shell words that end the flatrob part of an example line (the rest is another program or a redirection).
SHELL_BREAKS = ("|", "||", "&&", ";", "<", ">", "2>", "&")
EXAMPLE_FILE = importlib.resources.files("flatcli.examples") / "digits-cnn.safetensors"


gen = load_generate_docs()
ROOT_COMMAND = typer.main.get_command(app)


def walk(command: TyperGroup | TyperCommand, path: tuple[str, ...] = ()):
    """(path, command) for every visible command under ``command``, subcommands of groups included."""
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield (*path, name), sub
            yield from walk(sub, (*path, name))


COMMANDS = dict(walk(ROOT_COMMAND))


def page_of(path: tuple[str, ...]) -> Path:
    """A command's page: ``docs/commands/<top-level command>.md`` (a group's subcommands share its page)."""
    return DOCS / "commands" / f"{path[0]}.md"


def mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def nav_pages() -> list[str]:
    return [p.relative_to(DOCS).as_posix() for p in gen.doc_pages()[1:]] + ["cli.md"]


# ------------------------------------------------------------------------------------ coverage


def test_the_command_tree_is_read():
    assert {"sharpness", "attack", "bound"} <= {path[0] for path in COMMANDS}


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_a_page_in_the_site(path):
    page = page_of(path)
    assert page.is_file(), f"flatrob {' '.join(path)} has no page: write {page.relative_to(ROOT)}"
    assert page.relative_to(DOCS).as_posix() in nav_pages(), f"{page.name} is not in mkdocs.yml's nav"
    if len(path) > 1:
        assert f"flatrob {' '.join(path)}" in page.read_text(encoding="utf-8"), f"{page.name} lacks {' '.join(path)}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_is_documented(path):
    """Like sqlite-utils' test_docs: each long flag of the command (``--no-x`` too) is named in the docs."""
    text = page_of(path).read_text(encoding="utf-8")
    shared = "\n".join((DOCS / name).read_text(encoding="utf-8") for name in SHARED_PAGES)
    missing = []
    for param in COMMANDS[path].params:
        if param.param_type_name != "option" or param.hidden:
            continue
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("--") and not (mentions(text, flag) or mentions(shared, flag)):
                missing.append(flag)
    assert not missing, (f"flatrob {' '.join(path)}: {missing} named neither on {page_of(path).relative_to(ROOT)} "
                         f"nor on a page of shared options {SHARED_PAGES}")


def test_the_option_check_catches_a_missing_option(monkeypatch):
    other = typer.Typer()

    @other.command()
    def undocumented(an_option_nobody_wrote_down: int = 0) -> None:
        """A command with one option no page names."""

    extra = typer.main.get_command(other).params[0]
    monkeypatch.setattr(COMMANDS[("sharpness",)], "params", [*COMMANDS[("sharpness",)].params, extra])
    with pytest.raises(AssertionError, match="an-option-nobody-wrote-down"):
        test_every_option_is_documented(("sharpness",))


# ------------------------------------------------------------------------------------ examples


def shell_examples() -> list[tuple[str, str]]:
    """(page, command) for every ``flatrob ...`` line of the README's and the pages' bash blocks."""
    return [(page.relative_to(ROOT).as_posix(), ex.command)
            for page in gen.doc_pages() for ex in gen.shell_examples(page.read_text(encoding="utf-8"))]


def parse(command: str) -> None:
    """Parse a ``flatrob ...`` line as the CLI would, without running it: an unknown command, an unknown
    option or a refused value (a choice, a number) raises typer's usage error."""
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):
        if word in SHELL_BREAKS or word.startswith((">", "2>")):
            words = words[:i]
            break
    assert words[0] == "flatrob", command
    ctx = typer.Context(ROOT_COMMAND, info_name="flatrob")
    command_obj, args = ROOT_COMMAND, words[1:]
    while isinstance(command_obj, TyperGroup) and args and not args[0].startswith("-"):
        name, command_obj, args = command_obj.resolve_command(ctx, args)  # an unknown name raises UsageError
        ctx = typer.Context(command_obj, info_name=name, parent=ctx)
    command_obj.make_context(ctx.info_name, list(args), parent=ctx.parent)  # options and values, as the CLI parses


def test_the_readme_and_the_manual_have_examples():
    pages = {page for page, _ in shell_examples()}
    assert "README.md" in pages and len(pages) >= 10, pages


@pytest.mark.parametrize("page, command", shell_examples())
def test_every_shell_example_parses(page, command):
    try:
        parse(command)
    except typer.Exit:  # --help and the like
        pass
    except typer.TyperException as e:
        pytest.fail(f"{page}: `{command}` is refused by the CLI: {e.format_message()}")


def test_the_example_check_catches_a_wrong_option_and_value():
    for command in ("flatrob sharpness m.safetensors --no-such-option", "flatrob attack m.safetensors --norm l3",
                    "flatrob no-such-command x"):
        with pytest.raises(typer.TyperException):
            parse(command)


def python_blocks() -> list[tuple[str, int, str]]:
    """(page, line, code) for every ``python`` block of the README and the pages, less the ``api-example``."""
    out = []
    for page in gen.doc_pages():
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"(<!--[^>]*-->\s*)?```python\n(.*?)```", text, re.S):
            if m.group(1) and "api-example" in m.group(1):
                continue
            out.append((page.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, m.group(2)))
    return out


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working directory with what the examples name: ``runs/0/model.safetensors`` and ``runs/1/...``."""
    for i in (0, 1):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        shutil.copy(EXAMPLE_FILE, tmp_path / "runs" / str(i) / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page, line, code", python_blocks(), ids=lambda v: str(v) if not isinstance(v, str) or "\n" not in v else "")
def test_every_python_example_runs(page, line, code, scratch, capsys):
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs_example__"})
    assert capsys.readouterr().out.strip(), f"{page}:{line} printed nothing"


def test_api_example_is_marked_for_test_api():
    assert "<!-- api-example" in (DOCS / "api.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ the site


def test_mkdocs_build_strict_passes(tmp_path):
    """The site builds offline with every warning (a broken link or anchor, a page out of the nav) an error."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'flatrob[docs]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKDOCS")}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stderr, res.stderr
    for page in nav_pages():
        built = tmp_path / "site" / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        assert built.is_file(), built
    assert (tmp_path / "site" / "img" / "uncanny-valley.png").is_file()


def test_every_page_is_in_the_nav():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(nav_pages()), pages ^ set(nav_pages())


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith(("http://", "https://")) and not (ROOT / t).exists()]
    assert not missing, missing


def test_mkdocs_yml_nav_names_existing_pages():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    assert nav and all((DOCS / page).is_file() for page in nav_pages())
