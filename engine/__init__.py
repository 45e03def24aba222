"""Zero-RL engine: runtime, backends, reward and CLI. Kept import-light (no torch at import)."""
