"""Flashgate secret plane."""

__version__ = "0.1.0"
