"""The status pages' stylesheet and script, shipped as package data (pyproject.toml)."""
