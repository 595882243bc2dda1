"""``make bench``: every benchmark, one after another (the machine has 2 cores), then a summary.

Approximate wall time on the 2-core machine: train_speed 3 min, eval_speed 2 min, kl_results
55 min, kl_speed 35 min, lpips_agreement 5 min (+ installing JAX once), likelihood 100 min,
disentanglement 60 min, generation ~3 h (six models, 10,000 samples per row), compression ~100 min (4 models x
20 min, then coding), anomaly ~60 min (+ installing PyOD once), serve_latency 3 min, ddp 8 min.
``python bench/run.py NAME ...`` runs a subset.
"""

from __future__ import annotations

import subprocess
import sys

from common import HERE, RESULTS

BENCHMARKS = ["train_speed", "eval_speed", "kl_results", "kl_speed", "lpips_agreement", "likelihood", "generation",
              "disentanglement", "compression", "anomaly", "serve_latency", "ddp"]


def main() -> None:
    chosen = sys.argv[1:] or BENCHMARKS
    unknown = [c for c in chosen if c not in BENCHMARKS]
    if unknown:
        sys.exit(f"bench: unknown benchmark(s) {', '.join(unknown)} (choose from: {', '.join(BENCHMARKS)})")
    for name in chosen:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=True)
    # a benchmark may keep several result files (the likelihood bench one per budget: likelihood-15min.md)
    parts = [f.read_text() for name in BENCHMARKS for f in sorted(RESULTS.glob(f"{name}*.md"))]
    (RESULTS / "summary.md").write_text("\n\n".join(parts))
    print(f"\nwrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
