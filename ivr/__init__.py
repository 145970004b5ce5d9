"""ivr: a voice bot for the telephone."""

__version__ = "0.1.0"
