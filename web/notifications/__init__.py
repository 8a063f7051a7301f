"""Telling the user: what deserves a notice, the outbox, and its delivery."""
