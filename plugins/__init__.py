"""Adapters for existing face-recognition systems (installed as ``facepriv_plugins``)."""
