"""Importing this module registers every subcommand."""

from vaekit.cli import analysis, anomaly, demo, evaluate, interop, latents, pictures, train, weights  # noqa: F401
