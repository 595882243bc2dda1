"""Training objectives, registered by name in ``OBJECTIVES``; importing this package registers them
all. ``base`` holds the Objective base class, ``elbo`` the (beta-)ELBO, ``iwae`` the importance-
weighted bound, ``disentangling`` beta-TCVAE and FactorVAE, ``ldm`` latent diffusion's autoencoder
loss, and ``diffusion`` the denoising loss of diffusion models. The ELBO's pieces themselves live in
``vaekit.elbo``.
"""

from __future__ import annotations

from vaekit.elbo import KLSchedule, bits_per_dim, elbo_parts, free_bits_kl
from vaekit.objectives import diffusion, disentangling, iwae, ldm  # noqa: F401  (registration)
from vaekit.objectives.base import OBJECTIVES, Objective, adam, layer_kls
from vaekit.objectives.elbo import ELBO

__all__ = ["ELBO", "OBJECTIVES", "KLSchedule", "Objective", "adam", "bits_per_dim", "elbo_parts", "free_bits_kl",
           "layer_kls"]
