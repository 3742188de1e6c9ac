"""``python -m semantics [--out FILE] [--device SPEC] [--no-progress]``: the same as
``modelsync explore``, with the same one-line errors."""

import sys

from modelsync.cli import main

raise SystemExit(main(["explore", *sys.argv[1:]]))
