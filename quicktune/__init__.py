"""quicktune: turn your own examples into a local chat model."""

__version__ = "0.1.0"
