"""Command-line entry points (flags are parsed here and nowhere else)."""
