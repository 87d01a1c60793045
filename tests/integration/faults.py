"""Faults injected for real: a TCP proxy that drops a service's connections, a Redis that loses its messages.

:class:`TcpProxy` stands between the farm and one service (PostgreSQL, Redis, moto's S3). ``drop()`` closes
every open connection (both sockets, so the client sees a reset or EOF mid-conversation) and refuses new
ones (accepted, then closed at once) until ``restore()``; the port never changes, so clients reconnect to the
same URL once the "outage" ends.

:class:`OwnRedis` is a redis-server of the caller's own, without persistence: ``restart()`` SIGKILLs it and
starts it again on the same port, empty, as a broker that crashed and lost every queued message.

Nothing here imports pytest: bench/chaos.py uses it too.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class TcpProxy:
    """A threaded TCP proxy on 127.0.0.1:<free port> in front of ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._dropped = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.port = 0
        self.accepted = 0
        self.refused = 0

    # --- life -------------------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener, self.port = listener, int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults -----------------------------------------------------------------------------------------
    def drop(self) -> None:
        """Close every open connection and refuse new ones until :meth:`restore`."""
        self._dropped.set()
        self._close_all()

    def restore(self) -> None:
        self._dropped.clear()

    @property
    def dropped(self) -> bool:
        return self._dropped.is_set()

    def url(self, original_url: str) -> str:
        """``original_url`` with its host:port replaced by this proxy's (user, password, path, query kept)."""
        parts = urlsplit(original_url)
        netloc = parts.netloc
        userinfo, _, _hostport = netloc.rpartition("@")
        new = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, new, parts.path, parts.query, parts.fragment))

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns) // 2

    # --- the work ---------------------------------------------------------------------------------------
    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._dropped.is_set():
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """The (host, port) a service URL points at."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def free_port() -> int:
    """A local TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server on 127.0.0.1:``port`` (a free one by default) with no persistence, in its own session.

    Raises:
        RuntimeError: from :meth:`start` when redis-server is not installed or does not answer within 20 s.
    """

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="own-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> OwnRedis:
        if not self.available():
            raise RuntimeError("redis-server is not installed")
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(self.workdir)]
        log_path = self.workdir / "redis.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer within 20 s")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; every message it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL, then start again on the same port: the broker comes back empty (no persistence)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OwnRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queue_length(self, queue: str = "cpu") -> int:
        """LLEN of a Celery queue (a Redis list named after the queue)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=3, socket_timeout=5)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
