"""Count: a masterless, distributed time-series database."""

__version__ = "0.1.0"
