"""Importing this module registers every subcommand."""

from vaekit.cli import demo, evaluate, pictures, train  # noqa: F401
