"""The operator commands, one module per command or small family. Each module's `register(sub,
kwargs)` adds its parser(s) to the root parser and sets `run` (the coroutine the command runs);
services/cli/operator.py calls them in MODULES' order (the order of `wapi-guard --help`)."""
