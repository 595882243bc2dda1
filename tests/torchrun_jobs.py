"""Several vaekit jobs in one torchrun launch (for the distributed tests: one process group, one
torch import per rank, instead of one launch per job).

    python -m torch.distributed.run --nproc-per-node 2 ... tests/torchrun_jobs.py JOBS.json RESULTS_DIR

JOBS.json is a list of jobs, run in order by every rank:
- ``{"cli": [ARGS...]}``: ``vaekit ARGS`` as the command line runs it (its exit code is recorded);
- ``{"api": "train" | "resume", "kwargs": {...}}``: ``vaekit.train(**kwargs)`` / ``vaekit.resume(**kwargs)``
  (the final weights' SHA-256 is recorded, so the test can check that every rank holds the same).
Each rank writes RESULTS_DIR/rank{RANK}.json: one {"code": ..., "digest": ...} per job.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def digest(model) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    results_dir = Path(sys.argv[2])
    from vaekit.cli.main import main as vaekit_main

    results = []
    for job in jobs:
        if "cli" in job:
            try:
                code = vaekit_main([str(a) for a in job["cli"]])
            except SystemExit as e:
                code = int(e.code or 0)
            results.append({"code": code})
        else:
            import vaekit

            model, _ = getattr(vaekit, job["api"])(**job["kwargs"])
            results.append({"code": 0, "digest": digest(model)})
        sys.stdout.flush()
    (results_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(results))
    from vaekit.training.distributed import setup, shutdown

    setup()  # (a job list whose every job failed before joining still leaves a group to close)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
