"""The ``vaekit`` command. Subcommands register with ``@command(name)``; a user error prints one
line on stderr and exits with code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vaekit.errors import Interrupted, TrainingStopped, VaekitError
from vaekit.registry import Registry

COMMANDS: Registry[Command] = Registry("command")


class Command:
    """A subcommand: ``add_arguments`` declares its options, ``run`` does the work (lazily
    importing torch and friends so that ``vaekit --help`` stays instant)."""

    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int | None:
        raise NotImplementedError


def command(name: str) -> Callable[[type[Command]], type[Command]]:
    def decorate(cls: type[Command]) -> type[Command]:
        cls.name = name
        COMMANDS.register(name)(cls())
        return cls

    return decorate


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> Parser:
    from vaekit import __version__
    from vaekit.cli import commands  # noqa: F401  (registers the subcommands)

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
