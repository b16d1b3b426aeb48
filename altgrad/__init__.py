"""altgrad: which 8-bit float format gains most from geometry-aware weight updates, and why."""

__version__ = "0.1.0"
