"""Perceptual similarity: LPIPS with real pretrained weights, obtained and converted offline."""

from vaekit.perceptual.lpips import LPIPS, load_lpips

__all__ = ["LPIPS", "load_lpips"]
