"""``python -m modelsync`` runs the command line (the same as the ``modelsync`` command)."""

from .cli import main

raise SystemExit(main())
