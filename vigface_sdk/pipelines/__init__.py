"""VIGFace pipelines."""
