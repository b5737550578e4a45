"""Client for the lab's data service."""

__version__ = "1.0.0"
