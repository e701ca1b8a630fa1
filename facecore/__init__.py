"""Shared foundation of the face-privacy SDKs: errors, face data, recognizers, metrics."""

__version__ = "0.1.0"
