"""``python -m app.rebuild``: the rebuild without the ``faust`` command line."""

from app.rebuild.cli import main

raise SystemExit(main())
