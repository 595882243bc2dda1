"""Importing this module registers every subcommand."""

from vaekit.cli import (  # noqa: F401
    analysis,
    anomaly,
    compression,
    demo,
    evaluate,
    generation,
    interop,
    latents,
    pictures,
    serve,
    train,
    weights,
)
