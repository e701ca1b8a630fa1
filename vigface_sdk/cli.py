"""``vigface-cli``: build a virtual-identity face space and synthesize privacy-free datasets."""

from __future__ import annotations

import click

from facecore import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vigface-cli")
def main() -> None:
    """VIGFace: virtual identities for face-recognition training sets."""
