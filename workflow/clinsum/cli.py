"""`clinsum <command> ...`: the command line the Snakemake rules call, one command per stage (and tools).

Each module named in COMMANDS exposes `add_cli(subparsers)`, which adds its command(s) and sets `func`.
A command imports only its own module (a job runs the code its rule declares as input, nothing else);
`clinsum --help` lists them all. Heavy libraries (torch, transformers, vllm) are imported inside the stage
functions, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from . import __version__
from .io import ClinsumError

# command -> the module that provides it
COMMANDS = {
    "synthetic": "synthetic",
    "ingest": "ingest",
    "split": "split",
    "models": "models",
    "teacher": "teacher",
    "crop": "crop",
    "train": "train",
    "reward": "reward",
    "infer": "infer",
    "evaluate": "evaluate",
    "judge": "judge",
    "judge-consistency": "judge",
    "report": "report",
    "submission": "submission",
    "submission-runs": "submission",
    "plan": "plan",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command (its module alone is imported), or of every command."""
    parser = argparse.ArgumentParser(
        prog="clinsum",
        description="Stages of the clinsum workflow (normally run by Snakemake; see README.md), and `plan`.",
    )
    parser.add_argument("--version", action="version", version=f"clinsum {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"clinsum.{module}").add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
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
    except OSError as error:
        if error.errno is None:
            raise  # not about a file (a library's own error): its traceback is its message
        logging.getLogger(__name__).debug("the system error's traceback", exc_info=True)
        print(f"clinsum {args.command}: error: {os_error_sentence(error)}", file=sys.stderr)
        return 1
    return 0


# what to do about the system errors a stage meets on its files
OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free space (or point results/ elsewhere) and run again; finished jobs and the partial files of resumable ones are kept",
    errno.EDQUOT: "the disk quota is used up: free space and run again; finished jobs and the partial files of resumable ones are kept",
    errno.EROFS: "the file system is read-only: run where results/ can be written",
    errno.EACCES: "no permission: check who owns it and its mode",
    errno.EPERM: "not permitted: check who owns it and its mode",
    errno.ENOENT: "it does not exist",
    errno.EIO: "an input/output error of the disk or network file system",
}


def os_error_sentence(error: OSError) -> str:
    """A system error as a sentence: the file, what happened, and what to do."""
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None) or "a file"
    hint = OS_ERROR_HINTS.get(error.errno, "")
    return f"{where}: {error.strerror or error}" + (f" ({hint})" if hint else "")


if __name__ == "__main__":
    sys.exit(main())
