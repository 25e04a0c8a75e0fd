"""wapi-guard services: the gRPC edge, the application core, the CLI."""
