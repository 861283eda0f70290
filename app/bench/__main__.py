"""``python -m app.bench``: see :mod:`app.bench.cli`."""

from app.bench.cli import main

raise SystemExit(main())
