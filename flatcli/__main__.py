"""``python -m flatcli``: the ``flatrob`` command, without the current directory on the import path.

``python -m`` puts the current directory first on ``sys.path``, so a file there named like any module
(``yaml.py``, ``torch.py``, a ``module:Class`` someone planted) would be imported instead of the
installed one. It is removed before anything else is imported (``PYTHONPATH`` still adds it for who
means it); ``-P`` / ``PYTHONSAFEPATH`` already leave it out.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from flatcli.cli import run  # noqa: E402 - after the path is safe

run()
