"""Evolution API v2 (self-hosted, EvolutionAPI/evolution-api): client and webhook dialect."""
