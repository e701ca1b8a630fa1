"""``python -m advface_sdk`` is ``advface-cli``."""

from .cli import main

main()
