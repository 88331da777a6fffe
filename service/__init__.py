"""bncheck: a gradient-checking service for batch normalization."""

__version__ = "0.1.0"
