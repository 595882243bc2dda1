"""Importing this module registers every subcommand."""

from vaekit.cli import analysis, demo, evaluate, interop, pictures, serve, train, weights  # noqa: F401
