"""Running the explorer: uvicorn on a socket bound here first, so that the address printed is the
one listening (``--port 0`` picks a free port) and a port in use is a one-line error."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from vaekit.errors import VaekitError
from vaekit.serve.app import LOOPBACK_HOSTS, MAX_UPLOAD_BYTES, create_app, load_views


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is named (IPPROTO_TCP, not 0) because asyncio sets
    TCP_NODELAY only on connections whose socket says it is TCP; without it every response (headers,
    then body) waits ~40 ms for the client's delayed ACK (Nagle's algorithm)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise VaekitError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Server:
    """The explorer bound to ``host:port``: ``url`` once constructed, ``run()`` blocks until
    ``stop()`` (or Ctrl-C)."""

    def __init__(self, runs: Iterable[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, log_level: str = "warning", precision: str = "auto") -> None:
        import uvicorn

        views = load_views(runs, device, precision)
        hosts = [*LOOPBACK_HOSTS] if is_loopback(host) else None
        self.app = create_app(views, max_upload_bytes=max_upload_bytes, allowed_hosts=hosts)
        self.socket = bind(host, port)
        self.url = url_of(self.socket)
        config = uvicorn.Config(self.app, log_level=log_level, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)

    def run(self) -> None:
        """Serve until ``stop()``; Ctrl-C stops it too (uvicorn finishes the requests in flight,
        then re-raises the signal, which ends here)."""
        try:
            self._server.run(sockets=[self.socket])
        except KeyboardInterrupt:
            pass
        finally:
            self.socket.close()

    def stop(self) -> None:
        self._server.should_exit = True

    @property
    def started(self) -> bool:
        return self._server.started


def serve(runs: Iterable[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_upload_bytes: int = MAX_UPLOAD_BYTES, announce: Callable[[str], None] | None = None,
          precision: str = "auto") -> None:
    """Serve the explorer for ``runs`` until interrupted; ``announce`` receives the address;
    ``precision`` is what the models run in (``vaekit.load``)."""
    server = Server(runs, host, port, device, max_upload_bytes, precision=precision)
    (announce or print)(server.url)
    if not is_loopback(host):
        print(f"vaekit: warning: serving on {host}, reachable from other machines; the explorer has no "
              "authentication", file=sys.stderr)
    server.run()
