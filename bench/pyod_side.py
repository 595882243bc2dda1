"""Runs inside bench/.venv-pyod: PyOD's VAE and AutoEncoder on given arrays, as a PyOD user runs them
(its defaults, preprocessing=True standardising the features), with a stated number of epochs and seed.

Run (from anomaly.py): python pyod_side.py DATA.npz OUT.npz EPOCHS SEED
DATA.npz holds x_train [N, D] and x_test [M, D] float32; OUT.npz gets vae and autoencoder: the
decision_function of x_test (higher = more anomalous). Prints one JSON line with the seconds each took.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main() -> None:
    data, out, epochs, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.vae import VAE

    with np.load(data) as d:
        x_train, x_test = d["x_train"], d["x_test"]
    scores, seconds = {}, {}
    for name, cls in (("vae", VAE), ("autoencoder", AutoEncoder)):
        torch.manual_seed(seed)
        started = time.perf_counter()
        det = cls(epoch_num=epochs, random_state=seed, verbose=0, device="cpu")
        det.fit(x_train)
        scores[name] = np.asarray(det.decision_function(x_test), dtype=np.float64)
        seconds[name] = time.perf_counter() - started
    np.savez(out, **scores)
    print(json.dumps({"seconds": seconds, "n_train": len(x_train), "n_test": len(x_test), "epochs": epochs}))


if __name__ == "__main__":
    main()
