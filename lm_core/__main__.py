"""``python -m lm_core train|sample`` (see :mod:`lm_core.cli`)."""

from .cli import main

raise SystemExit(main())
