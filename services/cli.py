"""The ``linewatch`` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from services.vision.artifact import ArtifactError
from services.vision.backbone import BackboneError
from services.vision.dataset import DatasetError
from services.vision.images import ImageError
from services.vision.synthesis import SynthesisError

COMMAND_MODULES = (
    "services.commands.vision",
    "services.commands.line",
    "services.commands.serve",
    "services.commands.distributed",
    "services.commands.triton",
    "services.commands.analytics",
    "services.commands.review",
    "services.commands.models",
)
USER_ERRORS = (ArtifactError, BackboneError, DatasetError, ImageError, SynthesisError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linewatch", description="Visual quality inspection for production lines."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.handler(args)
    except USER_ERRORS as err:
        print(f"linewatch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


def run() -> None:
    """The console-script entry point: ``main()``, then a fast exit.

    torch's CUDA build touches about 150 MB of otherwise idle library pages while the interpreter
    tears down, which would make every short command's peak memory look that much larger. Once
    ``main`` has returned, every file it wrote is closed, so flush what is buffered and leave.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
