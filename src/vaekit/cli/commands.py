"""Importing this module registers every subcommand."""

from vaekit.cli import demo, evaluate, interop, pictures, train, weights  # noqa: F401
