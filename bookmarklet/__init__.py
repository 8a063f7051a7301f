"""The bookmarklet's readable source, shipped as package data (pyproject.toml);
web/bookmarklet.py builds it."""
