"""AdvFace: adversarial template protection against face reconstruction."""
