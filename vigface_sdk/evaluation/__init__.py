"""VIGFace evaluation."""
