"""Bridges to other engines (each module imports its engine lazily, on first use)."""
