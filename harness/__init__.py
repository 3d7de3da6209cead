"""isobench: what isolation costs and whether it holds."""

__version__ = "0.1.0"
