"""Shared helpers for the benchmarks: subprocesses, side venvs for anchors, tables, results."""

from __future__ import annotations

import json
import os
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


def markdown_table(rows: list[dict], columns: list[str], digits: int = 2) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def machine_info() -> dict:
    """What a figure was measured on: CPU model and family, its bf16 instructions (AMX,
    AVX512-BF16 or none) and what --precision auto picks there, cores, torch and its threads, GPU."""
    import torch

    from vaekit.precision import cpu_bf16_isa, cpu_model, cpuinfo, resolve_precision

    isa = cpu_bf16_isa()
    info = {"cpu": cpu_model(), "cpu_family": cpuinfo("cpu family"), "amx": isa == "amx", "bf16_isa": isa,
            "auto": resolve_precision("auto", "cpu").name, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine() -> str:
    m = machine_info()
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ", no GPU"
    isa = {"amx": "AMX", "avx512_bf16": "AVX512-BF16, no AMX", None: "no AMX, no AVX512-BF16"}[m["bf16_isa"]]
    family = f" family {m['cpu_family']}" if m["cpu_family"] else ""
    return (f"{m['cpu']}{family} ({isa}; auto -> {m['auto']}), {m['cores']} cores, torch {m['torch']}, "
            f"{m['threads']} threads{gpu}")


def save(name: str, payload: dict, table: str, precision: str = "fp32", command: str | None = None) -> None:
    """Write bench/results/NAME.md (the table under a line saying when, on what machine, in what
    precision and by which command) and NAME.json (the numbers, with the same record). These are the
    files docs/benchmarks.md names."""
    import datetime

    RESULTS.mkdir(parents=True, exist_ok=True)
    when = datetime.date.today().isoformat()
    command = command or "python " + " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    record = {"date": when, "machine": machine_info(), "precision": precision, "command": command}
    header = f"<!-- {name} -->\n`{command}`, {when}, {machine()}, precision: {precision}\n\n"
    (RESULTS / f"{name}.json").write_text(json.dumps({**record, **payload}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(header + table.rstrip() + "\n")
