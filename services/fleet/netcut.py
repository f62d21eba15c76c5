"""A TCP line between a client and the broker that can be cut and restored (fault injection).

:class:`CuttableLine` listens on a local port and forwards every connection to the broker.
:meth:`CuttableLine.cut` closes every connection through it and refuses new ones, as a lost
network link would: the broker sees the client vanish without a DISCONNECT (so it publishes
the client's last will), and the client sees its socket closed and starts reconnecting
(buffering its QoS≥1 messages meanwhile). :meth:`CuttableLine.restore` lets it in again.

Used by ``pulsebms-fleet up`` to take an edge off the network mid-run without touching the
edge's MQTT client; standard library only.

Example:
    >>> line = CuttableLine("127.0.0.1", 1883)  # doctest: +SKIP
    >>> line.start(); line.port  # point the client at this port  # doctest: +SKIP
    >>> line.cut(); line.restore(); line.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttableLine"]


class CuttableLine:
    """TCP forwarder ``listen_host:port`` → ``target_host:target_port`` with a cut switch.

    Args:
        target_host: Where to forward to (the broker).
        target_port: Its port.
        listen_host: Address to listen on.
        listen_port: Port to listen on (0: a free one, see :attr:`port`).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, int(target_port))
        self._server = socket.create_server((listen_host, listen_port))
        self._server.settimeout(0.1)
        self.host = listen_host
        self.port: int = int(self._server.getsockname()[1])
        """The port clients connect to."""
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0
        """Connections forwarded so far."""
        self.cuts = 0
        """Times the line was cut."""

    @property
    def is_cut(self) -> bool:
        """Whether the line is cut now."""
        return self._down

    def start(self) -> CuttableLine:
        """Start accepting (a daemon thread); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._accept, name="cuttable-line", daemon=True)
            self._thread.start()
        return self

    def cut(self) -> None:
        """Close every connection through the line and refuse new ones until restored."""
        with self._lock:
            self._down = True
            self.cuts += 1
            live = list(self._sockets)
            self._sockets.clear()
        for sock in live:
            _close(sock)

    def restore(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self._down = False

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        self.cut()
        _close(self._server)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> CuttableLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._down:
                    _close(client)
                    _close(upstream)
                    continue
                self._sockets.update((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
