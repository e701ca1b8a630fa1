"""Recognizer adapters behind one interface (``embed``, ``dim``, ``fingerprint``)."""

from .base import FileRecognizer, Preprocessing, Recognizer
from .registry import RECOGNIZERS, create_recognizer, list_recognizers, register_recognizer

__all__ = ["Preprocessing", "Recognizer", "FileRecognizer", "RECOGNIZERS", "create_recognizer", "list_recognizers",
           "register_recognizer"]
