"""Shared fixtures: tiny seeded datasets and an in-process CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class CLIResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli():
    """Run ``vaekit ARGS`` in-process; returns exit code, stdout and stderr."""
    from vaekit.cli.main import main

    def run(*args) -> CLIResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse usage errors
                code = int(e.code or 0)
        return CLIResult(code, out.getvalue(), err.getvalue())

    return run


def pytest_configure(config):
    # auto precision must not depend on a timing probe in tests (the same suite, the same numerics on
    # every CPU); tests/test_precision.py exercises the probe with fakes. Set for launched ranks too.
    os.environ["VAEKIT_PRECISION_PROBE"] = "0"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def blobs_npz(tmp_path) -> Path:
    """300 tiny 1x8x8 'images' in [0, 1] from 3 classes, with labels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    base = rng.random((3, 1, 8, 8)).astype(np.float32)
    x = np.clip(base[y] + 0.1 * rng.standard_normal((300, 1, 8, 8)).astype(np.float32), 0, 1)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def table_csv(tmp_path) -> Path:
    """A small numeric table with a header: 4 correlated features, 200 rows."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal((200, 2))
    x = np.concatenate([z @ rng.standard_normal((2, 4)) * 3 + 10, rng.integers(0, 2, (200, 1))], axis=1)
    path = tmp_path / "table.csv"
    header = "a,b,c,d,label\n"
    path.write_text(header + "\n".join(",".join(f"{v:.5f}" for v in row) for row in x) + "\n")
    return path


@pytest.fixture
def fashion_mnist() -> Path:
    """The Debian dataset-fashion-mnist files: required in CI (fail, not skip, when missing)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("VAEKIT_CI"):
            pytest.fail(f"Fashion-MNIST is missing in CI: {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR



@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs for the explorer's API and browser tests, trained once (tests/serve_helpers.py)."""
    from serve_helpers import make_runs

    return make_runs(tmp_path_factory.mktemp("serve"), tabular=True)
