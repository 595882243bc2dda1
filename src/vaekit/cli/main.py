"""The ``vaekit`` command: builds the parser from every registered subcommand and runs one. A user
error prints one line on stderr and exits with code 2, never a traceback."""

from __future__ import annotations

import sys

from vaekit.cli.base import COMMANDS, Parser
from vaekit.errors import Interrupted, TrainingStopped, VaekitError


def build_parser() -> Parser:
    from vaekit.cli import commands  # noqa: F401  (registers the subcommands)
    from vaekit.version import __version__

    parser = Parser(prog="vaekit", description="Variational autoencoders: train, measure, see, ship.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        cmd = COMMANDS.get(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from vaekit.runtime import tune_cpu

        tune_cpu()  # before torch starts worker threads (they inherit it)
        return args.handler.run(args) or 0
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"vaekit: {e}", file=sys.stderr)
        return 130
    except TrainingStopped as e:
        print(f"vaekit: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
