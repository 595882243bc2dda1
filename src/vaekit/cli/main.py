"""The ``vaekit`` command: builds the parser from every registered subcommand and runs one. A user
error prints one line on stderr and exits with code 2, never a traceback."""

from __future__ import annotations

import os
import sys

from vaekit.cli.base import COMMANDS, Parser
from vaekit.errors import AgreedError, Interrupted, TrainingStopped, VaekitError


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
    # under torchrun every rank runs this; rank 0 speaks for errors all ranks share
    rank0 = os.environ.get("RANK", "0") in ("", "0")
    try:
        if _world_size() > 1 and not args.handler.distributed:
            raise AgreedError(f"'vaekit {args.handler.name}' runs in one process; under torchrun (WORLD_SIZE="
                              f"{_world_size()}) only 'vaekit train' and 'vaekit evaluate' run")
        from vaekit.runtime import tune_cpu

        tune_cpu()  # before torch starts worker threads (they inherit it)
        code = args.handler.run(args) or 0
        _ended_together(True)
        return code
    except VaekitError as e:
        if rank0 or not isinstance(e, AgreedError):
            print(f"vaekit: error: {e}", file=sys.stderr)
        _ended_together(isinstance(e, AgreedError))
        return 2
    except Interrupted as e:  # the ranks stop together (the decision travels with the gradients)
        if rank0:
            print(f"vaekit: {e}", file=sys.stderr)
        _ended_together(True)
        return 130
    except TrainingStopped as e:
        if rank0:
            print(f"vaekit: {e}", file=sys.stderr)
        _ended_together(True)
        return 1
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


_together = False  # whether the last command ended on a path every rank takes together


def _ended_together(together: bool) -> None:
    global _together
    _together = together


def run() -> None:
    """The ``vaekit`` program (and ``python -m vaekit``, which torchrun runs): ``main``, then, under
    torchrun, leave the process group together when every rank ended together (a group torn down
    by interpreter exit while a peer still talks to it can abort the process)."""
    code = main()
    if _together and _world_size() > 1:
        from vaekit.training.distributed import shutdown

        shutdown()
    sys.exit(code)


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1
