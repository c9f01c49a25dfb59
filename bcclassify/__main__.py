"""``python -m bcclassify``: the command line."""

from .cli import main

raise SystemExit(main())
