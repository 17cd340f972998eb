"""``python -m armt_ts``: the ``armt-ts`` command (armt_ts/cli.py)."""

from armt_ts.cli import main

raise SystemExit(main())
