"""``python -m adapters.simulator``: same as adapters.simulator.cli."""

from adapters.simulator.cli import main

raise SystemExit(main())
