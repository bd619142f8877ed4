"""`python -m regopt ...` is the `regopt` command."""

from regopt.cli import main

raise SystemExit(main())
