"""VIGFace training."""
