"""``make bench``: every benchmark, one after another (the machine has 2 cores), then a summary."""

from __future__ import annotations

import subprocess
import sys

from common import HERE, RESULTS

BENCHMARKS = ["train_speed.py", "eval_speed.py"]


def main() -> None:
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
    summary = "\n\n".join((RESULTS / f"{s[:-3]}.md").read_text() for s in BENCHMARKS)
    (RESULTS / "summary.md").write_text(summary)
    print(f"\nwrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
