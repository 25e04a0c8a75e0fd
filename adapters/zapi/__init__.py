"""Z-API (hosted, https://developer.z-api.io): client and webhook dialect."""
