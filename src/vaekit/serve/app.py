"""The explorer's web app (Starlette, served by uvicorn): the page and its assets from the package,
and a JSON API over ``RunView`` (documented in docs/serve.md).

Requests cannot pile up: each run's model work runs in a worker thread under that run's lock, and a
request may name its ``view`` (any string the client chooses, such as "slider") and a ``seq``uence
number; a request older than the newest one seen for the same (run, view) is answered 204 No Content
(with the newest number in ``X-Vaekit-Superseded``) without touching the model, both on arrival and
when its turn at the lock comes. 204 rather than a 4xx: the client asked to be superseded, and a
browser logs every 4xx answer in its console as an error.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vaekit.errors import VaekitError
from vaekit.registry import suggest
from vaekit.serve.views import MAX_SAMPLES, MAX_STEPS, RunView, ServeError, parse_floats

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # an uploaded file, whole request included
MAX_JSON_BYTES = 4 * 1024 * 1024  # a JSON request (a code of an SD-sized latent is ~350 kB)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def static_dir() -> Path:
    return Path(str(resources.files("vaekit.serve") / "static"))


SUPERSEDED_HEADER = "X-Vaekit-Superseded"


class Superseded(ServeError):
    def __init__(self, newest: int) -> None:
        super().__init__(204, f"superseded by a newer request for the same view (seq {newest})")
        self.newest = newest


class Sequencer:
    """The newest ``seq`` seen per (run, view); the oldest views are forgotten past ``capacity``."""

    def __init__(self, capacity: int = 4096) -> None:
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def admit(self, key: str, seq: int) -> None:
        with self._lock:
            newest = self._newest.get(key, seq)
            if seq < newest:
                raise Superseded(newest)
            self._newest[key] = seq
            self._newest.move_to_end(key)
            while len(self._newest) > self.capacity:
                self._newest.popitem(last=False)

    def check(self, key: str, seq: int) -> None:
        with self._lock:
            newest = self._newest.get(key, seq)
        if seq < newest:
            raise Superseded(newest)


def unique_names(paths: Sequence[Path]) -> list[str]:
    """URL-safe run names from the directories' names; repeats get -2, -3, ..."""
    names: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-.") or "run"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def load_views(runs: Iterable[str | Path], device: str = "cpu", precision: str = "auto") -> dict[str, RunView]:
    """Open every run once (a bad one fails here, naming it, before anything is served). A
    latent-diffusion run becomes the ``diffusion`` prior of its VAE run's page (that run is served
    too, from the path the diffusion run recorded, if it was not named); a pixel-diffusion run has no
    latent space to explore and is refused."""
    from vaekit.run import load, read_run_config

    paths = [Path(r) for r in runs]
    if not paths:
        raise VaekitError("name at least one run directory to serve")
    vaes, diffusion = [], []
    for path in paths:
        cfg = read_run_config(path)
        if getattr(cfg.model_class, "evaluator", "") != "diffusion":
            vaes.append(path)
        elif getattr(cfg.model, "vae", ""):
            diffusion.append((path, Path(cfg.model.vae)))
        else:
            raise VaekitError(f"{path}: a {cfg.model_class.name} run has no latent space to explore; serve VAE "
                              "runs, and latent-diffusion runs to sample them by diffusion")
    for _, vae in diffusion:
        if not any(p.resolve() == vae.resolve() for p in vaes):
            vaes.append(vae)
    views = {name: RunView(name, path, device, precision) for name, path in zip(unique_names(vaes), vaes)}
    for path, vae in diffusion:
        view = next(v for v in views.values() if v.path.resolve() == vae.resolve())
        view.diffusion.append((path, load(path, device=device, precision=precision)))  # refuses a changed VAE
    return views


def create_app(runs: Iterable[str | Path] | dict[str, RunView], *, device: str = "cpu", precision: str = "auto",
               max_upload_bytes: int = MAX_UPLOAD_BYTES, allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The explorer for ``runs`` (run directories, or views already loaded). ``allowed_hosts``
    restricts the Host header (``serve`` passes the loopback names when bound to loopback, so a
    page elsewhere cannot reach the server through DNS rebinding)."""
    views = runs if isinstance(runs, dict) else load_views(runs, device, precision)
    api = _API(views, max_upload_bytes)
    routes = [
        Route("/", api.index),
        Route("/api/runs", api.list_runs),
        Route("/api/runs/{run}", api.describe),
        Route("/api/runs/{run}/samples", api.samples, methods=["POST"]),
        Route("/api/runs/{run}/decode", api.decode, methods=["POST"]),
        Route("/api/runs/{run}/examples/{index:int}", api.example),
        Route("/api/runs/{run}/upload", api.upload, methods=["POST"]),
        Route("/api/runs/{run}/interpolate", api.interpolate, methods=["POST"]),
        Route("/api/runs/{run}/latent-map", api.latent_map),
        Mount("/static", StaticFiles(directory=static_dir()), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    handlers: dict[Any, Callable] = {ServeError: _serve_error, VaekitError: _user_error, HTTPException: _http_error,
                                     Exception: _internal_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.views = views
    return app


class _API:
    def __init__(self, views: dict[str, RunView], max_upload_bytes: int) -> None:
        self.views = views
        self.max_upload_bytes = max_upload_bytes
        self.sequencer = Sequencer()

    async def index(self, request: Request) -> Response:
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def list_runs(self, request: Request) -> Response:
        return JSONResponse({"runs": [{"name": v.name, "model": v.model.name, "data": v.info.source,
                                       "kind": v.info.kind} for v in self.views.values()]})

    async def describe(self, request: Request) -> Response:
        view = self._view(request)
        return JSONResponse(await self._work(view, None, view.describe))

    async def samples(self, request: Request) -> Response:
        view = self._view(request)
        doc, seq = await self._json(request, view)
        f = _Fields(doc)
        prior = f.text("prior", "standard")
        n = f.integer("n", 16, 1, MAX_SAMPLES)
        temperature = f.number("temperature", 1.0, 1e-3, 10.0)
        seed = f.integer("seed", 0, 0, 2**63 - 1)
        label = f.integer("label", None, None, None)
        f.done()
        return await self._respond(view, seq, lambda: view.samples(prior, n, temperature, seed, label))

    async def decode(self, request: Request) -> Response:
        view = self._view(request)
        doc, seq = await self._json(request, view)
        f = _Fields(doc)
        z = f.floats("z")
        label = f.integer("label", None, None, None)
        f.done()
        return await self._respond(view, seq, lambda: view.decode(z, label))

    async def example(self, request: Request) -> Response:
        view = self._view(request)
        index = request.path_params["index"]
        return await self._respond(view, None, lambda: view.example(index))

    async def upload(self, request: Request) -> Response:
        """The image as the raw body (any content type but multipart), or as the one file of a
        multipart form; ``label`` (conditional runs), ``view`` and ``seq`` in the query string."""
        view = self._view(request)
        q = request.query_params
        unknown = sorted(set(q) - {"label", "view", "seq"})
        if unknown:
            raise ServeError(400, f"unknown query parameter '{unknown[0]}' (upload takes label, view, seq)")
        label = _query_int(q, "label")
        seq = self._sequence(view, q.get("view"), _query_int(q, "seq"))
        limited = _limited(request, self.max_upload_bytes, " (vaekit serve --max-upload-mb)")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with limited.form(max_files=1, max_fields=4) as form:
                files = [v for v in form.values() if hasattr(v, "read")]
                if len(files) != 1:
                    raise ServeError(400, "send the image as the one file of the form (e.g. curl -F image=@x.png)")
                data = await files[0].read()
        else:
            data = await limited.body()
        if not data:
            raise ServeError(400, "the upload is empty; send an image file as the request body")
        return await self._respond(view, seq, lambda: view.upload(data, label))

    async def interpolate(self, request: Request) -> Response:
        view = self._view(request)
        doc, seq = await self._json(request, view)
        f = _Fields(doc)
        a, b = f.require("a"), f.require("b")
        steps = f.integer("steps", 8, 2, MAX_STEPS)
        label = f.integer("label", None, None, None)
        f.done()
        return await self._respond(view, seq, lambda: view.interpolate(a, b, steps, label))

    async def latent_map(self, request: Request) -> Response:
        view = self._view(request)
        return await self._respond(view, None, view.latent_map)

    # -- plumbing ---------------------------------------------------------------------------------------
    def _view(self, request: Request) -> RunView:
        name = request.path_params["run"]
        if name not in self.views:
            raise ServeError(404, f"unknown run '{name}'{suggest(name, self.views)}")
        return self.views[name]

    async def _json(self, request: Request, view: RunView) -> tuple[dict, tuple[str, int] | None]:
        """The body as a JSON object, with ``view`` and ``seq`` taken out and admitted."""
        body = await _limited(request, MAX_JSON_BYTES).body()
        try:
            doc = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise ServeError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ServeError(400, "the request body must be a JSON object")
        f = _Fields(doc)
        name, seq = f.text("view", None), f.integer("seq", None, 0, None)
        return f.rest, self._sequence(view, name, seq)

    def _sequence(self, view: RunView, name: str | None, seq: int | None) -> tuple[str, int] | None:
        if (name is None) != (seq is None):
            raise ServeError(400, "'view' and 'seq' go together: give both or neither")
        if name is None:
            return None
        if len(name) > 200:
            raise ServeError(400, "'view' must be at most 200 characters")
        key = f"{view.name}\n{name}"
        self.sequencer.admit(key, seq)
        return key, seq

    async def _work(self, view: RunView, seq: tuple[str, int] | None, fn: Callable[[], Any]) -> Any:
        def locked():
            with view.lock:
                if seq is not None:  # a newer request came while this one waited: skip the model work
                    self.sequencer.check(*seq)
                return fn()

        return await run_in_threadpool(locked)

    async def _respond(self, view: RunView, seq: tuple[str, int] | None, fn: Callable[[], dict]) -> Response:
        start = time.perf_counter()
        result = await self._work(view, seq, fn)
        result["ms"] = round((time.perf_counter() - start) * 1000, 2)
        if seq is not None:
            result["seq"] = seq[1]
        return JSONResponse(result)


class _Fields:
    """Typed fields of a JSON object; each bad value names its field, and ``done`` refuses unknown keys."""

    def __init__(self, doc: dict) -> None:
        self.rest = dict(doc)

    def _take(self, name: str, default: Any) -> Any:
        value = self.rest.pop(name, None)
        return default if value is None else value

    def require(self, name: str) -> Any:
        if name not in self.rest:
            raise ServeError(400, f"'{name}' is required")
        return self.rest.pop(name)

    def text(self, name: str, default: str | None) -> str | None:
        value = self._take(name, default)
        if value is not None and not isinstance(value, str):
            raise ServeError(400, f"'{name}' must be a string")
        return value

    def integer(self, name: str, default: int | None, lo: int | None, hi: int | None) -> int | None:
        value = self._take(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ServeError(400, f"'{name}' must be an integer, got {json.dumps(value)}")
        _check_range(name, value, lo, hi)
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self._take(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ServeError(400, f"'{name}' must be a finite number, got {json.dumps(value)}")
        _check_range(name, value, lo, hi)
        return float(value)

    def floats(self, name: str):
        return parse_floats(self.require(name), name)

    def done(self) -> None:
        if self.rest:
            raise ServeError(400, f"unknown field '{sorted(self.rest)[0]}'")


def _check_range(name: str, value, lo, hi) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ServeError(400, f"'{name}' must be in [{lo}, {hi}], got {value}")


def _query_int(q, name: str) -> int | None:
    text = q.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ServeError(400, f"query parameter '{name}' must be an integer, got {text!r}") from None


def _limited(request: Request, limit: int, hint: str = "") -> Request:
    """The same request, its body refused with 413 once it passes ``limit`` bytes (checked against
    Content-Length first, then counted as it arrives, for chunked bodies)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ServeError(413, f"the request body is {int(length):,} bytes; the limit is {limit:,}{hint}")
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ServeError(413, f"the request body is over the limit of {limit:,} bytes{hint}")
        return message

    return Request(request.scope, receive)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _serve_error(request: Request, exc: ServeError) -> Response:
    if isinstance(exc, Superseded):
        return Response(status_code=204, headers={SUPERSEDED_HEADER: str(exc.newest)})
    return _error(exc.status, exc.message)


async def _user_error(request: Request, exc: VaekitError) -> Response:
    return _error(400, str(exc))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error ({type(exc).__name__}: {exc}); the server goes on serving")
