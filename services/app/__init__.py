"""Use cases: sending, ingest, health, stall watch, change feed, outbound webhooks, recovery."""
