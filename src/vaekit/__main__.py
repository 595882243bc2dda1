"""``python -m vaekit`` (and ``torchrun -m vaekit``): the same as the ``vaekit`` command."""

from vaekit.cli.main import run

run()
