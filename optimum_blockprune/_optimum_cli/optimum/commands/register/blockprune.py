"""Registers `optimum-cli blockprune {prune,rank,estimate,push}`.

Installed as `optimum/commands/register/blockprune.py`, a PEP 420 namespace module that optimum-cli imports
at start-up; keep its imports light (the heavy ones happen when a command runs).
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_blockprune import cli


def _leaf(name: str) -> type[BaseOptimumCLICommand]:
    help_text, add_arguments = cli.SUBCOMMANDS[name]

    class _Command(BaseOptimumCLICommand):
        COMMAND = CommandInfo(name=name, help=help_text)

        @staticmethod
        def parse_args(parser):
            add_arguments(parser)

        def run(self):
            raise SystemExit(cli.execute(self.args))

    _Command.__name__ = f"Blockprune{name.capitalize()}Command"
    return _Command


class BlockpruneCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="blockprune", help="Remove transformer blocks chosen by constrained binary optimisation."
    )
    SUBCOMMANDS = tuple(
        CommandInfo(name=name, help=cli.SUBCOMMANDS[name][0], subcommand_class=_leaf(name))
        for name in cli.SUBCOMMANDS
    )

    def run(self):
        self.parser.print_help()
        raise SystemExit(1)


REGISTER_COMMANDS = [BlockpruneCommand]
