"""`clinsum <stage> ...`: the command line the Snakemake rules call, one subcommand per stage.

Each stage module exposes `add_cli(subparsers)`, which adds its subcommand and sets `func`.
Heavy libraries (torch, transformers, vllm) are imported inside the stage functions, so
`clinsum --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .io import ClinsumError

STAGES = ("models", "ingest", "split", "crop", "teacher", "train", "infer", "evaluate", "judge", "report", "plan", "synthetic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinsum",
        description="Stages of the clinsum workflow (normally run by Snakemake; see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"clinsum {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for stage in STAGES:
        try:
            module = importlib.import_module(f"clinsum.{stage}")
        except ModuleNotFoundError as error:
            if error.name != f"clinsum.{stage}":
                raise
            continue  # a stage not built yet
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except ClinsumError as error:
        print(f"clinsum {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
