"""The subcommand contract: a ``Command`` declares its options and runs; it registers with
``@command(name)``. Command modules import this module, and ``main`` imports the command modules."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from vaekit.registry import Registry

COMMANDS: Registry[Command] = Registry("command")


class Command:
    """A subcommand: ``add_arguments`` declares its options, ``run`` does the work (lazily
    importing torch and friends so that ``vaekit --help`` stays instant)."""

    name: str = ""
    help: str = ""
    distributed: bool = False  # runs under torchrun with several processes (train, evaluate)

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
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun every rank fails alike: rank 0 says it
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
