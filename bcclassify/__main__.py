"""``python -m bcclassify``: the command line."""

from bcclassify.cli.main import main

raise SystemExit(main())
