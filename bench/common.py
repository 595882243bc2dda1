"""Shared helpers for the benchmarks: subprocesses, side venvs for anchors, tables, results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FASHION = Path("/usr/share/datasets/fashion-mnist")
VAEKIT = [sys.executable, "-m", "vaekit.cli"]


def require_fashion_mnist() -> Path:
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"bench: Fashion-MNIST not found in {FASHION} (apt-get install dataset-fashion-mnist)")
    return FASHION


def run(cmd: list[str], env: dict | None = None) -> str:
    """Run a command, echoing its stderr, and return its stdout (fails loudly)."""
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"bench: command failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def side_venv(name: str, packages: list[str]) -> Path:
    """A separate virtual environment for an anchor package (torch pinned to the CPU build)."""
    venv = HERE / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    if not stamp.exists():
        print(f"bench: creating {venv} with {', '.join(packages)}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, *packages], check=True)
        stamp.write_text("ok\n")
    return python


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def save(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
