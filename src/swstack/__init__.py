"""swstack: declarative builds of the software stacks behind multi-user Jupyter services."""

__version__ = "0.1.0"
