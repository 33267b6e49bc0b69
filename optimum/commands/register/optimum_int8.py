"""Registers ``optimum-cli int8 quantize`` and ``optimum-cli int8 evaluate`` with optimum's CLI.

optimum 2.x loads every module of the ``optimum.commands.register`` namespace package and registers
the commands in its ``REGISTER_COMMANDS``; optimum-int8 installs this file there.
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_int8.cli import run_command
from optimum_int8.tuning import commands


class Int8QuantizeCommand(BaseOptimumCLICommand):
    @staticmethod
    def parse_args(parser):
        commands.add_quantize_arguments(parser)

    def run(self):
        return run_command(commands.run_quantize, self.args, "optimum-cli int8 quantize")


class Int8EvaluateCommand(BaseOptimumCLICommand):
    @staticmethod
    def parse_args(parser):
        commands.add_evaluate_arguments(parser)

    def run(self):
        return run_command(commands.run_evaluate, self.args, "optimum-cli int8 evaluate")


class Int8Command(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="int8", help="optimum-int8: int8 quantization with accuracy-aware tuning, and evaluation")
    SUBCOMMANDS = (
        CommandInfo(name="quantize", help=commands.QUANTIZE_HELP, subcommand_class=Int8QuantizeCommand),
        CommandInfo(name="evaluate", help=commands.EVALUATE_HELP, subcommand_class=Int8EvaluateCommand),
    )


REGISTER_COMMANDS = [Int8Command]
