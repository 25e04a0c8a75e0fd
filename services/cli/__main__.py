"""`python -m services.cli`: the `wapi-guard` command."""

from services.cli.main import main

raise SystemExit(main())
