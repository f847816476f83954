"""The package version, in one place (the checkpoint format and ``metarec --version`` read it)."""

__version__ = "0.1.0"
