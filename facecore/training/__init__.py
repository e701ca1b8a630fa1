"""Training plumbing shared by both SDKs: (face, embedding) packs, torchrun/DDP context, safe checkpoints."""
