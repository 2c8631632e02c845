"""Custody: the provenance and governance gateway in front of Gemini image models."""

__version__ = "0.1.0"
