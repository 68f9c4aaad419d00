"""`python -m styleclip …`: see styleclip/cli.py."""

from .cli import main

raise SystemExit(main())
