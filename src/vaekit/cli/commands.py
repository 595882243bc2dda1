"""Importing this module registers every subcommand."""

from vaekit.cli import analysis, compression, demo, evaluate, interop, pictures, train, weights  # noqa: F401
