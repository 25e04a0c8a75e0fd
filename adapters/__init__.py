"""I/O adapters: W-API over HTTP, persistence, the W-API simulator."""
