"""Lossless compression with a trained VAE: bits-back coding with ANS (BB-ANS, Townsend et al. 2019)
and, for hierarchical runs, Bit-Swap (Kingma et al. 2019), with the ``constriction`` coder.

``compress(model, x) -> bytes`` and ``decompress(model, data) -> x``; ``read_info(data)`` gives the
file's header (shape, rates, initial bits). See docs/compression.md.
"""

from vaekit.compression.api import compress, decompress, model_hash, read_info

__all__ = ["compress", "decompress", "model_hash", "read_info"]
