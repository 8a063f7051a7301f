"""The rules every entry point shares: minting (minting.py), a receipt's counters and state
kept exact (ledger.py), do-not-track, retention and export."""
