"""The HTTP surface: the W-API webhook bridge, the status page and its actions."""
