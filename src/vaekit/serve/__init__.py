"""A latent-space explorer in the browser for trained runs (``vaekit serve RUN [RUN ...]``).

``create_app(runs)`` builds the Starlette app (the page, its assets and the JSON API documented in
docs/serve.md); ``serve(runs, host, port)`` runs it under uvicorn; ``Server`` does the same in
steps (bind, then ``run``/``stop``) for embedding and tests. Needs the ``serve`` extra
(``pip install 'vaekit[serve]'``: Starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

__all__ = ["Server", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from vaekit.serve.app import create_app

        return create_app
    if name in ("Server", "serve"):
        from vaekit.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'vaekit.serve' has no attribute {name!r}")
