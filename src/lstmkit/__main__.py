"""``python -m lstmkit`` is the ``lstmkit`` command."""

from .cli import main

raise SystemExit(main())
