"""Composition root and command line of the softphone."""

from __future__ import annotations

import argparse
import sys

from softphone import __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``softphone`` command line."""
    parser = argparse.ArgumentParser(prog="softphone", description=__doc__)
    parser.add_argument("--version", action="version", version=f"softphone {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``softphone`` command."""
    build_parser().parse_args(argv if argv is not None else sys.argv[1:])
