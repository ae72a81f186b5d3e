"""``python -m embedml``: the ``embedml`` command."""

from .cli import main

raise SystemExit(main())
