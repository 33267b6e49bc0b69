"""The ``optimum-int8`` command line. Each subcommand is defined beside the code it runs.

A subcommand module exposes ``add_command(subparsers)``, which adds its parser and sets
``run=<function taking the parsed args>`` as a default.
"""

import argparse
import importlib
import sys

COMMAND_MODULES: tuple[str, ...] = ("optimum_int8.tuning.commands", "optimum_int8.legacy.command", "optimum_int8.benchmark.command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-int8", description="INT8 quantization of transformers models for CPUs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
