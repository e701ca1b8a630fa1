"""``python -m vigface_sdk`` is ``vigface-cli`` (also under ``torchrun -m vigface_sdk``)."""

from .cli import main

main()
