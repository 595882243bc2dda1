"""Importing this module registers every subcommand."""

from vaekit.cli import analysis, demo, evaluate, generation, interop, pictures, train, weights  # noqa: F401
