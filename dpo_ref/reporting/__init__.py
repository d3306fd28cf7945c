"""Reporting: results tables, plots and the token-level analysis, all rebuilt from files on disk."""
