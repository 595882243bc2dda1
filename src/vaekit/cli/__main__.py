"""``python -m vaekit.cli``: the same as the ``vaekit`` command."""

from vaekit.cli.main import run

run()
