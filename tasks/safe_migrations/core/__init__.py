"""The shared core every room uses: configuration, errors and results, private files,
masking and escaping, connections with the environment's timeouts (built through the
engine registry, the one room it imports)."""
