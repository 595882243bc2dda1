"""Errors meant for people: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class VaekitError(Exception):
    """A problem with the user's input (a path, a file, a field or a value), stated in one line."""


class AgreedError(VaekitError):
    """A user error that every rank of a torchrun job raises together (printed once, by rank 0)."""


class TrainingStopped(Exception):
    """Training ended early for a reason the user must know (divergence); exit code 1."""


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; the message says how to continue."""
