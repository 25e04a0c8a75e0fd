"""The command line: `wapi-guard` entry point, operator commands, demo."""
