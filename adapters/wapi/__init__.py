"""W-API adapter: wire contract (contract.py), HTTP provider (client.py), webhook parser (webhooks.py)."""
