"""Recognizer adapters behind one interface (``embed``, ``dim``, ``fingerprint``)."""

from .base import Preprocessing, Recognizer
from .registry import create_recognizer, list_recognizers

__all__ = ["Preprocessing", "Recognizer", "create_recognizer", "list_recognizers"]
