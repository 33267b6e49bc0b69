"""The ``optimum-int8`` command line. Each subcommand is defined beside the code it runs.

A subcommand module exposes ``add_command(subparsers)``, which adds its parser and sets
``run=<function taking the parsed args>`` as a default. A user error (a missing file, a refused
output, a malformed checkpoint, a full disk) is one line on stderr and exit code 2; ``--debug`` shows
the traceback instead.
"""

import argparse
import importlib
import sys

# What a user's input or environment causes: files, directories, disks, the Hub (OSError), and
# malformed configs, checkpoints, data or arguments (ValueError and its Config/Checkpoint errors; KeyError
# for a dataset column that is not there).
USER_ERRORS = (OSError, ValueError, KeyError)
USER_ERROR_EXIT_CODE = 2
_MESSAGE_LIMIT = 1000

COMMAND_MODULES: tuple[str, ...] = ("optimum_int8.tuning.commands", "optimum_int8.legacy.command", "optimum_int8.benchmark.command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-int8", description="INT8 quantization of transformers models for CPUs."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    return parser


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after a subcommand too (and under optimum-cli); SUPPRESS keeps a global one from being reset."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")


def run_command(run, args, prog: str) -> int:
    """``run(args)``; a user error becomes one line on stderr and exit code 2 (unless ``args.debug``)."""
    try:
        return run(args) or 0
    except USER_ERRORS as error:
        if getattr(args, "debug", False):
            raise
        text = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError's str() is a repr
        message = " ".join(str(text).split()) or type(error).__name__
        if len(message) > _MESSAGE_LIMIT:
            message = message[:_MESSAGE_LIMIT] + " ..."
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.run, args, f"optimum-int8 {args.command}")


if __name__ == "__main__":
    sys.exit(main())
