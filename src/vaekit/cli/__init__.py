"""The command-line interface (``vaekit``)."""
