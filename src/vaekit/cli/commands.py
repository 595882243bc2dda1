"""Importing this module registers every subcommand."""

from vaekit.cli import (  # noqa: F401
    analysis,
    compression,
    demo,
    evaluate,
    generation,
    interop,
    pictures,
    train,
    weights,
)
