"""In how many files of flatcli/ each shared option's name appears (the contract issue's measure).

    python scripts/option_counts.py            # one line per option of the groups: files, then the files
    python scripts/option_counts.py --max 4    # exit 1 when an option appears in more than 4 files

An option is declared once, in its group (flatcli/options/), and read where it is consumed; a name that
spreads over many files is an option threaded by hand through layers again. A name counts where it appears
as a whole word (``takeoff``, not ``takeoff_tau``), in code or text alike.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402
import pkgutil  # noqa: E402

from flatcli import options  # noqa: E402 - after the path

#: Every option group of every module of flatcli/options/ (the shared groups and those of single commands).
GROUPS = sorted({value for module in pkgutil.iter_modules(options.__path__)
                 for value in vars(importlib.import_module(f"flatcli.options.{module.name}")).values()
                 if isinstance(value, type) and issubclass(value, options.Group) and value is not options.Group},
                key=lambda group: group.__name__)


def counts() -> dict[str, list[str]]:
    """Option name -> the files of flatcli/ naming it."""
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "flatcli").rglob("*.py"))}
    names = sorted({name for group in GROUPS for name, _, _ in group.options()})
    return {name: [f for f, text in texts.items() if re.search(rf"(?<![\w-]){name}(?![\w])", text)] for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=None, help="fail when an option appears in more files")
    args = parser.parse_args()
    found = counts()
    over = []
    for name, files in sorted(found.items(), key=lambda item: -len(item[1])):
        print(f"{len(files):3d}  {name:22s} {' '.join(files)}")
        if args.max is not None and len(files) > args.max:
            over.append(name)
    if over:
        print(f"over {args.max} files: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
