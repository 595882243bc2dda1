"""Explorer responsiveness: the round trip of a slider move (POST /api/runs/RUN/decode) through
`vaekit serve`, for the default MLP and conv models on Fashion-MNIST, against issue 21's target of
100 ms on this 2-core CPU, beside the model's decode alone (the floor).

The server runs as its own process (`python -m vaekit.cli serve RUN RUN --port 0`) and the client
keeps one HTTP/1.1 connection open, as a browser does. A sweep moves the most active unit from -3
to +3 in N steps, one request after another, each with the page's view name and sequence number.
A burst then sends B moves of the same slider at once (B connections): only the newest should be
decoded and answered with an image, the rest superseded (204), so moves cannot pile up.

The runs are trained briefly (latency does not depend on how well the model is trained; its size
does): `vaekit train --data fashion-mnist --model mlp|conv` with the models' default sizes.

Run: python bench/serve_latency.py [--requests 500] [--burst 20]   (--quick: a check in a minute)
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time

from common import RESULTS, VAEKIT, machine, markdown_table, require_fashion_mnist, run, save

TARGET_MS = 100.0
MODELS = ("mlp", "conv")


def train(model: str, limit: int) -> str:
    out = RESULTS / "runs" / f"serve-{model}"
    if not (out / "model.safetensors").is_file():
        run([*VAEKIT, "train", "--data", "fashion-mnist", "--model", model, "--epochs", "1", "--limit", limit,
             "--seed", "1", "--out", out, "--quiet", "--overwrite"])
    return str(out)


def start_server(runs: list[str]) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([*VAEKIT, "serve", *runs, "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
    if not match:
        proc.kill()
        sys.exit(f"bench: vaekit serve did not print its address ({line.strip()!r})")
    return proc, match.group(1), int(match.group(2))


class Client:
    """One kept-alive connection, as a browser tab holds."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None, float]:
        data = None if body is None else json.dumps(body).encode()
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        raw = response.read()
        ms = (time.perf_counter() - start) * 1000
        return response.status, (json.loads(raw) if raw else None), ms

    def close(self) -> None:
        self.conn.close()


def decode_alone(run_dir: str, z: list[float], n: int) -> list[float]:
    """The model's decode of one latent, in this process, without HTTP or PNG: the floor."""
    import torch

    import vaekit
    from vaekit.runtime import tune_cpu

    tune_cpu()  # as the CLI (and so the server) does
    model = vaekit.load(run_dir)
    t = torch.tensor([z], dtype=torch.float32)
    times = []
    with torch.no_grad():
        for i in range(n + 10):
            t[0, 0] = -3 + 6 * (i % 50) / 49
            start = time.perf_counter()
            model.decode(t)
            if i >= 10:
                times.append((time.perf_counter() - start) * 1000)
    return times


def base_code(run_dir: str) -> list[float]:
    import vaekit

    return [0.0] * vaekit.load(run_dir).config.latent_dim


def sweep(client: Client, name: str, base: list[float], unit: int, n: int) -> dict:
    z = list(base)
    rtt, server, decode = [], [], []
    for i in range(n + 10):  # the first 10 warm up
        z[unit] = -3 + 6 * (i % 50) / 49
        status, doc, ms = client.call("POST", f"/api/runs/{name}/decode", {"z": z, "view": "bench:slider",
                                                                            "seq": 1_000_000 + i})
        if status != 200:
            sys.exit(f"bench: decode answered {status}: {doc}")
        if i >= 10:
            rtt.append(ms)
            server.append(doc["ms"])
            decode.append(doc["decode_ms"])
    return {"round_trip": rtt, "server": server, "decode": decode}


def burst(host: str, port: int, name: str, base: list[float], size: int, rounds: int, offset: int) -> dict:
    """``size`` moves of one slider sent at once, ``rounds`` times: how long until the newest is
    answered, and how many were decoded (200) rather than superseded (204)."""
    clients = [Client(host, port) for _ in range(size)]
    newest_ms, decoded = [], []
    for r in range(rounds):
        ms, n = burst_once(clients, name, base, first_seq=offset + r * size)
        newest_ms.append(ms)
        decoded.append(n)
    for c in clients:
        c.close()
    return {"newest_ms": newest_ms, "decoded": decoded}


def burst_once(clients: list[Client], name: str, base: list[float], first_seq: int) -> tuple[float, int]:
    size = len(clients)
    codes: dict[int, int] = {}
    done: dict[int, float] = {}
    barrier = threading.Barrier(size + 1)

    def move(i: int) -> None:
        body = {"z": [*base[:-1], -3 + 6 * i / max(size - 1, 1)], "view": "bench:burst", "seq": first_seq + i}
        barrier.wait()
        codes[i] = clients[i].call("POST", f"/api/runs/{name}/decode", body)[0]
        done[i] = time.perf_counter()

    threads = [threading.Thread(target=move, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return (done[size - 1] - start) * 1000, sum(1 for c in codes.values() if c == 200)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=500, help="slider moves per model (default 500)")
    ap.add_argument("--burst", type=int, default=20, help="moves sent at once in the burst test (default 20)")
    ap.add_argument("--rounds", type=int, default=10, help="bursts per model (default 10)")
    ap.add_argument("--limit", type=int, default=5000, help="training images for the brief runs (default 5000)")
    ap.add_argument("--quick", action="store_true", help="a check of the whole bench: 30 moves, 2 bursts of 5")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.burst, args.rounds, args.limit = 30, 5, 2, 512
    require_fashion_mnist()
    print(f"serve_latency: {args.requests} moves, {args.rounds} bursts of {args.burst} on {machine()}",
          file=sys.stderr, flush=True)
    runs = {m: train(m, args.limit) for m in MODELS}
    # the floor first, before the server's process (and its threads) exists
    floors = {m: decode_alone(r, base_code(r), args.requests) for m, r in runs.items()}
    proc, host, port = start_server(list(runs.values()))
    rows, payload = [], {"target_ms": TARGET_MS, "requests": args.requests, "burst": args.burst,
                         "rounds": args.rounds, "models": {}}
    try:
        client = Client(host, port)
        names = [r["name"] for r in client.call("GET", "/api/runs")[1]["runs"]]
        for model, name in zip(MODELS, names):
            _, info, _ = client.call("GET", f"/api/runs/{name}")
            base, unit = info["sliders"]["base"], info["sliders"]["units"][0]["unit"]
            s = sweep(client, name, base, unit, args.requests)
            b = burst(host, port, name, base, args.burst, args.rounds, offset=10_000_000)
            floor = floors[model]
            payload["models"][model] = {"sweep": s, "burst": b, "decode_alone": floor, "run": runs[model]}
            rows.append({
                "model": f"{model} (default size)",
                "decode alone p50 (ms)": statistics.median(floor),
                "server decode p50 (ms)": statistics.median(s["decode"]),
                "server total p50 (ms)": statistics.median(s["server"]),
                "round trip p50 (ms)": statistics.median(s["round_trip"]),
                "round trip p95 (ms)": p(s["round_trip"], 95),
                "p95 / 100 ms target": p(s["round_trip"], 95) / TARGET_MS,
                f"burst of {args.burst}: newest answered p50 (ms)": statistics.median(b["newest_ms"]),
                f"burst of {args.burst}: decoded (max)": max(b["decoded"]),
            })
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)
    columns = list(rows[0])
    table = markdown_table(rows, columns)
    print(table)
    save("serve_latency", payload, table)


if __name__ == "__main__":
    main()
