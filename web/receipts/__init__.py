"""The rules every entry point shares: minting, corrections and recounts, do-not-track, retention, export."""
