"""The explorer's JSON API through Starlette's TestClient: every endpoint answers what the model
computes (pixel for pixel, number for number), stale requests never reach the model, and every bad
request gets a clear 4xx while the server goes on serving."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from serve_helpers import AnomalyStub, as_pixels, calibrated, noise_png, pixels

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from vaekit.serve.app import LOOPBACK_HOSTS, Sequencer, Superseded, create_app, load_views
from vaekit.serve.views import MAX_PIXELS


@pytest.fixture(scope="module")
def runs(serve_runs):
    return serve_runs


@pytest.fixture(scope="module")
def views(runs):
    return load_views(runs.values())


@pytest.fixture(scope="module")
def client(views):
    return TestClient(create_app(views))


def post(client, path, **body):
    return client.post(path, json=body)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_and_its_assets_come_from_the_package_and_name_no_other_host(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), "assets must not reach other hosts"


def test_runs_and_what_the_page_needs_to_lay_itself_out(client, views):
    names = [r["name"] for r in ok(client.get("/api/runs"))["runs"]]
    assert names == ["mlp", "conv", "akl", "tab"]
    mlp = ok(client.get("/api/runs/mlp"))
    assert mlp["conditional"] and mlp["class_names"] == [str(i) for i in range(10)]
    assert [p["name"] for p in mlp["priors"]] == ["standard", "gmm"] and "3 components" in mlp["priors"][1]["label"]
    assert mlp["metrics"] == ["elbo", "nll"] and mlp["anomaly"] is False
    assert mlp["upload"] == {"accepts": "image", "size": [8, 8]}
    # the sliders: every unit, most active first, activity = variance of the posterior means (as traverse)
    from vaekit.evaluation import posterior_means

    view = views["mlp"]
    mu = posterior_means(view.model, view.examples())
    activity = mu.var(0, unbiased=False)
    units = mlp["sliders"]["units"]
    assert [u["unit"] for u in units] == torch.argsort(activity, descending=True).tolist()
    assert [u["activity"] for u in units] == pytest.approx([float(activity[u["unit"]]) for u in units], abs=1e-4)
    assert mlp["sliders"]["base"] == pytest.approx(mu[0].tolist(), abs=1e-5)
    conv = ok(client.get("/api/runs/conv"))  # the latent-diffusion run "ld" is served as conv's prior
    assert not conv["conditional"] and [p["name"] for p in conv["priors"]] == ["standard", "diffusion"]
    assert conv["priors"][1]["label"] == "latent diffusion (ld: 8 ddim steps)"
    akl = ok(client.get("/api/runs/akl"))
    s = akl["sliders"]
    assert akl["metrics"] == ["psnr", "lpips"] and akl["latent_shape"] == [3, 8, 8]
    assert (s["mode"], s["channels"], s["height"], s["width"], len(s["base"])) == ("channels", 3, 8, 8, 192)
    assert all(lo < hi for lo, hi in zip(s["min"], s["max"]))
    tab = ok(client.get("/api/runs/tab"))
    assert tab["data"]["kind"] == "vector" and tab["upload"]["accepts"] is None


def test_decode_answers_the_models_own_decode_pixel_for_pixel(client, views):
    for name, label in (("mlp", 7), ("conv", None)):
        view = views[name]
        z = torch.randn(view.latent_size, generator=torch.Generator().manual_seed(1))
        doc = ok(post(client, f"/api/runs/{name}/decode", z=z.tolist(), label=label))
        y = None if label is None else torch.tensor([label])
        with torch.no_grad():
            expected = as_pixels(view.model.decode(z.view(1, -1), y)[0])
        got = pixels(doc["image"])
        assert got.shape == (8, 8, 3) and (got[..., 0] == expected).all()
        assert doc["decode_ms"] >= 0 and doc["ms"] >= doc["decode_ms"]
    a = pixels(ok(post(client, "/api/runs/mlp/decode", z=[0.0] * 4, label=1))["image"])
    b = pixels(ok(post(client, "/api/runs/mlp/decode", z=[0.0] * 4, label=2))["image"])
    assert (a != b).any()  # the label conditions the decoder


def test_autoencoder_kl_decode_takes_the_whole_latent(client, views):
    view = views["akl"]
    z = torch.randn(192, generator=torch.Generator().manual_seed(2))
    doc = ok(post(client, "/api/runs/akl/decode", z=z.tolist()))
    with torch.no_grad():
        x = view.model.decode(z.view(1, 3, 8, 8))[0]
    assert (pixels(doc["image"])[..., 0] == as_pixels((x + 1) / 2)).all()  # [-1, 1] shown as [0, 1]


def test_samples_follow_the_seed_the_prior_and_the_class(client, views):
    from vaekit.viz.grid import image_grid
    from vaekit.viz.pictures import sample_data

    first = ok(post(client, "/api/runs/mlp/samples", n=10, seed=3, temperature=0.8))
    again = ok(post(client, "/api/runs/mlp/samples", n=10, seed=3, temperature=0.8))
    other = ok(post(client, "/api/runs/mlp/samples", n=10, seed=4, temperature=0.8))
    gmm = ok(post(client, "/api/runs/mlp/samples", n=10, seed=3, temperature=0.8, prior="gmm"))
    assert first["image"] == again["image"] != other["image"] != gmm["image"]
    assert first["prior"] == "standard" and gmm["prior"] == "gmm"
    labelled = ok(post(client, "/api/runs/mlp/samples", n=6, seed=5, label=4))
    expected = image_grid(sample_data(views["mlp"].model, 6, 4, 1.0, 5), pad=1, scale=1)
    assert (pixels(labelled["image"]) == np.asarray(expected)).all()
    assert ok(post(client, "/api/runs/akl/samples", n=4))["n"] == 4


def test_a_latent_diffusion_run_samples_its_vaes_page(client, views, runs):
    from vaekit.viz.grid import image_grid
    from vaekit.viz.pictures import sample_data

    doc = ok(post(client, "/api/runs/conv/samples", prior="diffusion", n=6, seed=2))
    path, diffusion = views["conv"].diffusion[0]
    assert path == runs["ld"]
    expected = image_grid(sample_data(diffusion, 6, None, 1.0, 2), pad=1, scale=1)
    assert (pixels(doc["image"]) == np.asarray(expected)).all()
    assert doc["image"] != ok(post(client, "/api/runs/conv/samples", n=6, seed=2))["image"]
    alone = load_views([runs["ld"]])  # its VAE is served from the path the diffusion run recorded
    assert list(alone) == ["conv"] and alone["conv"].diffusion[0][0] == runs["ld"]


def test_a_test_example_comes_back_with_its_reconstruction_code_and_numbers(client, views):
    from vaekit.elbo import elbo_parts
    from vaekit.evaluation.likelihood import log_likelihood

    doc = ok(client.get("/api/runs/mlp/examples/3"))
    view = views["mlp"]
    x, y = view.examples().batch(torch.tensor([3]))
    assert doc["index"] == 3 and doc["label"] == int(y[0]) and doc["class_name"] == str(int(y[0]))
    with torch.no_grad():
        q = view.model.encode(x, y)
        recon = view.model.decode(q.mean, y)
        gen = torch.Generator().manual_seed(0)
        parts = elbo_parts(view.model, view.model(x, y, generator=gen), x)
        nll = -float(log_likelihood(view.model, x, y, 100, generator=gen)[0])
    assert (pixels(doc["image"])[..., 0] == as_pixels(x[0])).all()
    assert (pixels(doc["reconstruction"])[..., 0] == as_pixels(recon[0])).all()
    assert doc["z"] == pytest.approx(q.mean[0].tolist(), abs=1e-5)
    m = doc["metrics"]
    assert m["elbo"] == pytest.approx(float(parts["elbo"][0]), rel=1e-6)
    assert m["nll"] == pytest.approx(nll, rel=1e-6) and m["k"] == 100
    assert m["nll"] <= -m["elbo"] + 5.0  # the bound is (loosely) tighter than one-sample ELBO
    assert ok(client.get("/api/runs/mlp/examples/3")) | {"ms": 0} == doc | {"ms": 0}  # deterministic


def test_an_upload_is_resized_encoded_reconstructed_and_scored(client, views):
    data = noise_png(30, 40, rgb=True)
    raw = ok(client.post("/api/runs/mlp/upload?label=2", content=data, headers={"Content-Type": "image/png"}))
    form = ok(client.post("/api/runs/mlp/upload?label=2", files={"image": ("x.png", data, "image/png")}))
    assert {k: v for k, v in raw.items() if k != "ms"} == {k: v for k, v in form.items() if k != "ms"}
    assert raw["resized"] == {"from": [30, 40], "to": [8, 8]}
    from vaekit.data.images import fit_size

    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(fit_size(im, 8, 8).convert("L"))  # resized, then grey: as folders are read
    assert (pixels(raw["image"])[..., 0] == expected).all()
    assert set(raw["metrics"]) >= {"elbo", "recon", "kl", "nll", "bits_per_dim"}
    assert len(raw["z"]) == 4 and len(raw["point"]) == 2 and "anomaly" not in raw
    same_size = ok(client.post("/api/runs/conv/upload", content=noise_png(8, 8, rgb=False)))
    assert same_size["resized"] is None
    akl = ok(client.post("/api/runs/akl/upload", content=data))
    assert akl["resized"] == {"from": [30, 40], "to": [32, 32]}
    shown = pixels(akl["image"])[..., 0]  # the digits were 8x8 padded to 32x32: so is the upload
    assert (shown[12:20, 12:20] == expected).all() and shown[:12].max() == shown[20:].max() == 0
    assert akl["metrics"]["psnr"] > 0


def test_autoencoder_kl_numbers_are_psnr_and_lpips_only_when_its_weights_are_cached(client, views, monkeypatch,
                                                                                      tmp_path):
    from vaekit.evaluation.images import psnr
    from vaekit.io import save_tensors
    from vaekit.perceptual import load_lpips
    from vaekit.perceptual import lpips as lpips_module
    from vaekit.perceptual.weights import lpips_path

    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(lpips_module, "_cache", {})
    m = ok(client.get("/api/runs/akl/examples/0"))["metrics"]
    assert m["lpips"] is None and "vaekit weights fetch lpips" in m["lpips_note"]  # nothing is fetched
    assert not (tmp_path / "empty").exists()
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    weights = lpips_module.LPIPS("vgg").state_dict()  # a random backbone; positive heads
    save_tensors(lpips_path("vgg"), {k: v.abs() + 0.1 if k.startswith("lins") else v for k, v in weights.items()})
    m = ok(client.get("/api/runs/akl/examples/0"))["metrics"]
    view = views["akl"]
    x, _ = view.examples().batch(torch.tensor([0]))
    with torch.no_grad():
        r = view.model.decode(view.model.encode(x).mean).clamp(-1, 1)
        expected = float(load_lpips("vgg", fetch=False)(x, r)[0])
    assert m["psnr"] == pytest.approx(float(psnr((x + 1) / 2, (r + 1) / 2)[0]), rel=1e-5)
    assert m["lpips"] == pytest.approx(expected, rel=1e-5) and "lpips_note" not in m


def test_an_upload_shows_its_anomaly_score_when_the_run_is_calibrated(client, runs, views):
    with calibrated(runs["conv"], AnomalyStub(score=torch.tensor([5.0]), threshold=4.0, flagged=True)) as stub:
        assert ok(client.get("/api/runs/conv"))["anomaly"] is True
        doc = ok(client.post("/api/runs/conv/upload", content=noise_png(8, 8)))
        assert doc["anomaly"] == {"score": 5.0, "threshold": 4.0, "flagged": True}
        # the view's own model is scored (never reloaded), with the calibration read once from the run
        [(model, shape, calibration, labels)] = stub.calls
        assert model is views["conv"].model and shape == (1, 1, 8, 8) and calibration.run == runs["conv"]
        assert labels is None  # an unconditional run
    with calibrated(runs["conv"], AnomalyStub(fail=RuntimeError("boom"))):
        doc = ok(client.post("/api/runs/conv/upload", content=noise_png(8, 8)))
        assert "boom" in doc["anomaly"]["error"] and "nll" in doc["metrics"]  # the upload's own results stay
    assert ok(client.get("/api/runs/conv"))["anomaly"] is False  # no anomaly.json, no module: no score


def test_interpolation_runs_from_one_code_to_the_other_both_ways(client, views):
    view = views["conv"]
    z1 = torch.randn(4, generator=torch.Generator().manual_seed(7))
    doc = ok(post(client, "/api/runs/conv/interpolate", a={"index": 0}, b={"z": z1.tolist()}, steps=5))
    linear, spherical = pixels(doc["linear"]), pixels(doc["spherical"])
    assert linear.shape == spherical.shape == (10, 5 * 8 + 6, 3)  # one row of 5 tiles with 1 px gaps
    with torch.no_grad():
        ends = view.model.decode(torch.stack([view.codes()[0], z1]))
    tiles = [linear[1:9, 1 + i * 9 : 9 + i * 9, 0] for i in range(5)]
    assert (tiles[0] == as_pixels(ends[0])).all() and (tiles[-1] == as_pixels(ends[1])).all()
    assert (tiles[0] != tiles[2]).any() and (linear != spherical).any()
    cond = ok(post(client, "/api/runs/mlp/interpolate", a={"index": 0}, b={"index": 1}, steps=3))
    assert cond["steps"] == 3  # a conditional run keeps the first example's label


def test_the_latent_map_is_the_projection_vaekit_plot_draws(client, views):
    from vaekit.evaluation import posterior_means
    from vaekit.viz.pictures import LatentPlane

    doc = ok(client.get("/api/runs/conv/latent-map"))
    view = views["conv"]
    mu = posterior_means(view.model, view.examples()).double().numpy()
    plane = LatentPlane.fit(mu)
    assert doc["axes"] == list(plane.axes) and doc["axes"][0].startswith("PC1")
    assert np.allclose(doc["points"], plane.project(mu), atol=1e-4)
    assert doc["labels"] == view.examples().y.tolist() and doc["n"] == len(mu) == 180
    example = ok(client.get("/api/runs/conv/examples/5"))
    assert example["point"] == pytest.approx(doc["points"][5], abs=1e-4)


def test_a_tabular_run_draws_its_features_as_bars_and_takes_no_uploads(client):
    tab = ok(client.get("/api/runs/tab"))
    for doc in (ok(post(client, "/api/runs/tab/samples", n=4)), ok(post(client, "/api/runs/tab/decode", z=[0.0, 1.0])),
                ok(client.get("/api/runs/tab/examples/0"))):
        assert pixels(doc["image"]).shape[1] == 4 * 6 + 1 + 2  # four bars of 5 px with 1 px gaps, 1 px margins
    assert tab["sliders"]["mode"] == "units"
    r = client.post("/api/runs/tab/upload", content=noise_png(8, 8))
    assert r.status_code == 400 and "tabular" in r.json()["error"]


def test_an_older_request_for_the_same_view_is_answered_204_without_a_decode(client):
    body = {"z": [0.0] * 4, "view": "tab1:slider"}
    assert ok(post(client, "/api/runs/conv/decode", **body, seq=5))["seq"] == 5
    r = post(client, "/api/runs/conv/decode", **body, seq=3)
    assert r.status_code == 204 and r.content == b"" and r.headers["X-Vaekit-Superseded"] == "5"
    assert ok(post(client, "/api/runs/conv/decode", **body, seq=5))["seq"] == 5  # the same one again is fine
    assert ok(post(client, "/api/runs/conv/decode", z=[0.0] * 4, view="tab1:other", seq=1))["seq"] == 1
    assert ok(post(client, "/api/runs/mlp/decode", z=[0.0] * 4, label=0, view="tab1:slider", seq=1))  # other run
    seq = Sequencer(capacity=2)
    seq.admit("a", 1)
    seq.admit("b", 1)
    seq.admit("c", 1)  # forgets a
    seq.admit("a", 0)
    with pytest.raises(Superseded):
        seq.admit("c", 0)


class CountingLock:
    """A run's lock that counts the threads waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0
        self._count = threading.Lock()

    def __enter__(self):
        with self._count:
            self.waiting += 1
        self.lock.acquire()
        with self._count:
            self.waiting -= 1
        return self

    def __exit__(self, *exc):
        self.lock.release()


def test_requests_queued_behind_a_busy_model_do_not_pile_up(client, views, monkeypatch):
    """Five slider moves arrive while the model is busy: only the newest is decoded."""
    view = views["conv"]
    lock = CountingLock()
    monkeypatch.setattr(view, "lock", lock)
    decodes = []
    real = view.model.decode
    monkeypatch.setattr(view.model, "decode", lambda *a, **k: decodes.append(1) or real(*a, **k))
    results: dict[int, int] = {}

    def move(seq: int) -> None:
        results[seq] = post(client, "/api/runs/conv/decode", z=[0.1 * seq] * 4, view="busy:slider",
                            seq=seq).status_code

    lock.lock.acquire()  # the model is busy
    threads = [threading.Thread(target=move, args=(s,)) for s in range(1, 6)]
    try:
        for t in threads:
            t.start()
            deadline = time.monotonic() + 20
            while lock.waiting < threads.index(t) + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        assert lock.waiting == 5
    finally:
        lock.lock.release()
    for t in threads:
        t.join(20)
    assert results == {1: 204, 2: 204, 3: 204, 4: 204, 5: 200}
    assert len(decodes) == 1


def asgi_get(app, raw_path: bytes) -> tuple[int, bytes]:
    """One GET with the path exactly as given (an HTTP client would normalise '..' away)."""
    import anyio

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "GET",
             "scheme": "http",
             "path": raw_path.decode("latin-1"), "raw_path": raw_path, "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def chunked(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def bomb_png() -> bytes:
    """A 5000 x 5000 px image in about 30 kB: decoding it would take 25 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


BAD_REQUESTS = [
    ("unknown run", "GET", "/api/runs/nope", None, 404, "unknown run 'nope'"),
    ("unknown run, close name", "POST", "/api/runs/mpl/decode", {"z": [0]}, 404, "did you mean 'mlp'"),
    ("unknown API path", "GET", "/api/nothing", None, 404, "Not Found"),
    ("wrong method", "GET", "/api/runs/conv/decode", None, 405, "Method Not Allowed"),
    ("malformed JSON", "POST", "/api/runs/conv/decode", b"{'z': [1,", 400, "not valid JSON"),
    ("JSON that is no object", "POST", "/api/runs/conv/decode", b"[1, 2]", 400, "must be a JSON object"),
    ("unknown field", "POST", "/api/runs/conv/decode", {"z": [0] * 4, "zz": 1}, 400, "unknown field 'zz'"),
    ("missing z", "POST", "/api/runs/conv/decode", {}, 400, "'z' is required"),
    ("z of the wrong size", "POST", "/api/runs/conv/decode", {"z": [0, 1]}, 400, "'z' must have 4 numbers"),
    ("z with text", "POST", "/api/runs/conv/decode", {"z": [0, "a", 1, 2]}, 400, "numbers only"),
    ("z with NaN", "POST", "/api/runs/conv/decode", b'{"z": [0, NaN, 1, 2]}', 400, "finite"),
    ("label on an unconditional run", "POST", "/api/runs/conv/decode", {"z": [0] * 4, "label": 1}, 400,
     "not conditional"),
    ("no label on a conditional run", "POST", "/api/runs/mlp/decode", {"z": [0] * 4}, 400, "give 'label' (0..9)"),
    ("label out of range", "POST", "/api/runs/mlp/decode", {"z": [0] * 4, "label": 10}, 400, "0..9"),
    ("label of the wrong type", "POST", "/api/runs/mlp/decode", {"z": [0] * 4, "label": "3"}, 400,
     "'label' must be an integer"),
    ("seq without view", "POST", "/api/runs/conv/decode", {"z": [0] * 4, "seq": 1}, 400, "go together"),
    ("unknown prior", "POST", "/api/runs/conv/samples", {"prior": "flow"}, 400, "available: standard, diffusion"),
    ("diffusion prior with no diffusion run", "POST", "/api/runs/mlp/samples", {"prior": "diffusion"}, 400,
     "not available"),
    ("GMM prior that was never fitted", "POST", "/api/runs/conv/samples", {"prior": "gmm"}, 400, "not available"),
    ("too many samples", "POST", "/api/runs/conv/samples", {"n": 10_000}, 400, "'n' must be in [1, 100]"),
    ("temperature zero", "POST", "/api/runs/conv/samples", {"temperature": 0}, 400, "'temperature' must be in"),
    ("example out of range", "GET", "/api/runs/conv/examples/100000", None, 404, "out of range"),
    ("interpolation endpoint unreadable", "POST", "/api/runs/conv/interpolate", {"a": 3, "b": {"index": 0}}, 400,
     "'a' must be"),
    ("interpolation index out of range", "POST", "/api/runs/conv/interpolate",
     {"a": {"index": 0}, "b": {"index": 999}}, 404, "'b.index' 999 is out of range"),
    ("one step", "POST", "/api/runs/conv/interpolate", {"a": {"index": 0}, "b": {"index": 1}, "steps": 1}, 400,
     "'steps' must be in [2, 32]"),
    ("a file that is no image", "POST", "/api/runs/conv/upload", b"%PDF-1.4 not an image", 415,
     "not an image Pillow can read"),
    ("a truncated PNG", "POST", "/api/runs/conv/upload", noise_png(40, 40)[:300], 415, "not an image"),
    ("an empty upload", "POST", "/api/runs/conv/upload", b"", 400, "the upload is empty"),
    ("a decompression bomb", "POST", "/api/runs/conv/upload", bomb_png(), 413, f"at most {MAX_PIXELS:,} pixels"),
    ("an upload over the size limit", "POST", "/api/runs/conv/upload", b"\x89PNG" + bytes(9 * 2**20), 413,
     "the limit is 8,388,608"),
    ("an upload over the size limit, chunked", "POST", "/api/runs/conv/upload", "chunked", 413,
     "over the limit of 8,388,608 bytes"),
    ("an upload query it does not take", "POST", "/api/runs/conv/upload?size=3", noise_png(8, 8), 400,
     "unknown query parameter 'size'"),
    ("a form with no file", "POST", "/api/runs/conv/upload", "form", 400, "the one file of the form"),
]


@pytest.mark.parametrize("what,method,path,body,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_goes_on(client, what, method, path, body, status, message):
    if body == "chunked":  # no Content-Length: counted as it arrives
        r = client.post(path, content=chunked(b"\x89PNG" + bytes(9 * 2**20)))
    elif body == "form":
        r = client.post(path, files={"note": (None, "no file here")})
    elif isinstance(body, dict):
        r = client.request(method, path, json=body)
    else:
        r = client.request(method, path, content=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert client.get("/api/runs").status_code == 200


def test_pillows_own_decompression_bomb_check_is_an_error(client, monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)  # a 30x30 upload now trips Pillow's warning
    r = client.post("/api/runs/conv/upload", content=noise_png(30, 30))
    assert r.status_code == 413 and "decompression bomb" in r.json()["error"]


def test_static_files_refuse_paths_outside_their_folder(client):
    app = client.app
    assert asgi_get(app, b"/static/app.js")[0] == 200
    for path in (b"/static/../views.py", b"/static/../../serve/views.py", b"/static/%2e%2e/views.py",
                 b"/static/..%2fviews.py", b"/static//etc/passwd", b"/static/../../../../../../etc/passwd"):
        status, body = asgi_get(app, path)
        assert status == 404, path
        assert b"import" not in body and b"root:" not in body


def test_nothing_uploaded_is_left_on_disk(client, runs, monkeypatch, tmp_path):
    """A 1.6 MB form upload spills out of memory into a temporary file: it is gone afterwards, and
    the run directory is untouched."""
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    before = {p.name: p.stat().st_mtime_ns for p in runs["conv"].iterdir()}
    data = noise_png(760, 700)
    assert len(data) > 1024 * 1024
    doc = ok(client.post("/api/runs/conv/upload", files={"image": ("big.png", data, "image/png")}))
    assert doc["resized"] == {"from": [760, 700], "to": [8, 8]}
    assert list(spill.iterdir()) == []
    assert {p.name: p.stat().st_mtime_ns for p in runs["conv"].iterdir()} == before


def test_host_names_other_than_loopback_are_refused_when_bound_to_loopback(views):
    guarded = TestClient(create_app(views, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8000")
    assert guarded.get("/api/runs").status_code == 200
    assert guarded.get("/api/runs", headers={"Host": "attacker.example:8000"}).status_code == 400


def test_a_run_without_data_still_serves_sliders_and_samples(runs, tmp_path):
    import shutil

    bare = tmp_path / "imported"
    shutil.copytree(runs["conv"], bare)
    config = json.loads((bare / "config.json").read_text())
    config["data"]["spec"] = ""  # as for imported weights
    (bare / "config.json").write_text(json.dumps(config))
    client = TestClient(create_app([bare]))
    info = ok(client.get("/api/runs/imported"))
    assert info["examples"] == 0 and "no test examples" in info["data_note"]
    assert info["sliders"]["base"] == [0.0] * 4 and info["sliders"]["base_index"] is None
    assert ok(post(client, "/api/runs/imported/samples", n=4))["n"] == 4
    r = client.get("/api/runs/imported/latent-map")
    assert r.status_code == 404 and "no latent map" in r.json()["error"]


def test_serve_refuses_bad_arguments_in_one_line(cli, runs, tmp_path):
    r = cli("serve", tmp_path / "missing")
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "no such run directory" in r.err
    r = cli("serve", runs["conv"], "--port", "70000")
    assert r.code == 2 and "0..65535" in r.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = cli("serve", runs["conv"], "--port", str(taken.getsockname()[1]))
    assert r.code == 2 and "cannot listen on 127.0.0.1" in r.err and r.err.strip().count("\n") == 0


def test_the_listening_socket_says_it_is_tcp_so_responses_are_not_held_back():
    from vaekit.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:  # asyncio turns Nagle's algorithm off only for sockets whose protocol is IPPROTO_TCP
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_vaekit_serve_prints_its_address_serves_and_stops(runs):
    """The command itself, in a subprocess: it binds to 127.0.0.1 by default, prints the address,
    answers over real HTTP (a raw '..' path and a foreign Host header included) and exits 0 on Ctrl-C."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "serve", str(runs["conv"]), str(runs["mlp"]),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + proc.stderr.read()
        url, port = match.group(0), int(match.group(1))
        with urllib.request.urlopen(url + "api/runs", timeout=30) as r:
            assert [x["name"] for x in json.loads(r.read())["runs"]] == ["conv", "mlp"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /static/../../views.py HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 404") and b"import" not in answer
        request = urllib.request.Request(url + "api/runs", headers={"Host": "rebound.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()



def test_the_real_anomaly_score_of_an_upload_on_a_conditional_run(runs, cli, tmp_path):
    """No stub: `vaekit anomaly` calibrates a copy of the conditional run, and an upload with its class
    gets the score vaekit.anomaly computes, against that threshold."""
    import shutil

    from vaekit.anomaly import load_calibration, score_against_threshold

    run = tmp_path / "mlp"
    shutil.copytree(runs["mlp"], run)
    r = cli("anomaly", run, "--score", "nll", "--fpr", "0.1", "-k", "8", "--out", tmp_path / "s.csv", "--quiet")
    assert r.code == 0, r.err
    view = load_views([run])["mlp"]
    client = TestClient(create_app({"mlp": view}))
    doc = ok(client.post("/api/runs/mlp/upload?label=3", content=noise_png(8, 8)))
    anomaly = doc["anomaly"]
    assert "error" not in anomaly, anomaly
    calibration = load_calibration(run)
    x, _ = view.image_tensor(noise_png(8, 8))
    score, threshold, flagged = score_against_threshold(view.model, x, calibration=calibration,
                                                        y=torch.tensor([3]))
    assert anomaly["score"] == pytest.approx(float(score[0])) and anomaly["threshold"] == threshold
    assert anomaly["flagged"] == bool(flagged[0])
