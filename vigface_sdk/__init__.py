"""VIGFace: virtual-identity face space and prototype-conditioned dataset synthesis."""
