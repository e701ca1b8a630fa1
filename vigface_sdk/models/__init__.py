"""VIGFace models."""
