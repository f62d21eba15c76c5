"""What every PulseBMS broker offers: start/stop/restart, address, users, TLS, client links.

:class:`Broker` is the interface of :class:`~pulsebms.services.broker.EmbeddedBroker`
(amqtt, in-process) and :class:`~pulsebms.services.broker.MosquittoBroker` (the Debian
binary as a subprocess). Both listen on one address (``127.0.0.1`` and a free port by
default), authenticate every client by user name and password and apply the per-site
rules of :mod:`pulsebms.services.broker.acl`. With :class:`BrokerTls` the listener speaks
TLS only.

:func:`self_signed_tls` makes a throwaway certificate with the ``openssl`` command (tests
and local trials; a deployment uses a certificate from its own authority).

Example:
    >>> from pulsebms.services.broker import EmbeddedBroker, site_users
    >>> with EmbeddedBroker(site_users(["s1"], password="pw")) as broker:  # doctest: +SKIP
    ...     link = broker.link("edge-s1", "edge-1")
    ...     link.connect()
    True
"""

from __future__ import annotations

import abc
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulsebms.edge_runtime.mqtt_link import MqttLink, TlsSettings
from pulsebms.services.broker.acl import BrokerUser

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerTls",
    "free_port",
    "self_signed_tls",
    "wait_for_port",
]


class BrokerError(RuntimeError):
    """A broker that cannot start (binary missing, port taken, bad configuration)."""


@dataclass(frozen=True)
class BrokerTls:
    """The broker side of TLS.

    Attributes:
        cert_file: The broker's certificate chain (PEM).
        key_file: Its private key (PEM, unencrypted: the broker starts unattended).
        ca_file: The authority clients verify the certificate with (for a self-signed
            certificate, the certificate itself). Handed to clients by
            :meth:`Broker.client_tls`.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, outside the OS's ephemeral (client) port range.

    A broker restarted on a port of the ephemeral range can find it taken: while it is
    down, a client reconnecting to ``host:port`` may be given that very port as its own
    local port (and even connect to itself, TCP's simultaneous open). Ports below the
    range never are. Another process may still take the port later.
    """
    low, high = _ephemeral_range()
    candidates = list(range(20_000, low)) if low > 21_000 else list(range(high + 1, 65_536))
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for port in rng.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # let the OS pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, alive: Any = None) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Args:
        host: Address.
        port: Port.
        timeout_s: Give up after this long [s].
        alive: Optional ``() -> bool``; stop waiting (and raise) as soon as it is ``False``.

    Raises:
        BrokerError: On timeout, or when ``alive()`` turns ``False``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise BrokerError(f"the broker exited before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s} s") from None
            time.sleep(0.02)


def self_signed_tls(
    directory: str | Path, common_name: str = "localhost", ip: str = "127.0.0.1", days: int = 2
) -> BrokerTls:
    """A throwaway self-signed certificate (EC P-256) made with the ``openssl`` command.

    The certificate names ``common_name`` and ``ip`` (subjectAltName), so clients verify
    it with hostname checking on. It is its own authority (``ca_file`` = ``cert_file``).

    Args:
        directory: Where to write ``broker-cert.pem`` and ``broker-key.pem``.
        common_name: DNS name in the certificate.
        ip: IP address in the certificate.
        days: Validity [days].

    Returns:
        The files.

    Raises:
        BrokerError: If ``openssl`` is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("the openssl command is needed to make a self-signed certificate")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "broker-cert.pem", out / "broker-key.pem"
    cmd = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(int(days)),
        "-subj", f"/CN={common_name}",
        "-addext", f"subjectAltName=DNS:{common_name},IP:{ip}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BrokerError(f"openssl failed: {done.stderr.strip()[-500:]}")
    key.chmod(0o600)
    return BrokerTls(cert, key, cert)


class Broker(abc.ABC):
    """An MQTT broker with users, per-site ACLs and optional TLS, owned by this process.

    Args:
        users: Accounts (at least one); see :func:`~pulsebms.services.broker.site_users`.
        host: Listening address (``127.0.0.1``: this machine only).
        port: Listening port; a free one when ``None`` (kept across :meth:`restart`).
        tls: Serve TLS only, with this certificate.
        data_dir: Folder for configuration, password and ACL files and persistence; a
            temporary folder (removed by :meth:`close`) when ``None``.

    Attributes:
        persistent: Whether :meth:`restart` keeps sessions, their queued QoS≥1 messages
            and retained messages (class attribute).
        name: ``"mosquitto"`` or ``"embedded"`` (class attribute).
    """

    persistent: bool = False
    name: str = "broker"

    def __init__(
        self,
        users: Sequence[BrokerUser],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: BrokerTls | None = None,
        data_dir: str | Path | None = None,
    ) -> None:
        if not users:
            raise ValueError("a broker needs at least one user")
        names = [u.username for u in users]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        self.users: dict[str, BrokerUser] = {u.username: u for u in users}
        self.host = host
        self.port = free_port(host) if port is None else int(port)
        self.tls = tls
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix=f"pulsebms-{self.name}-"))
            if data_dir is None
            else Path(data_dir)
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- lifecycle
    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the broker serves now."""

    @abc.abstractmethod
    def start(self, timeout_s: float = 15.0) -> None:
        """Start serving (no-op when running).

        Raises:
            BrokerError: If it does not listen within ``timeout_s``.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop serving (gracefully: a persistent broker writes its state). Idempotent."""

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port.

        A :attr:`persistent` broker comes back with its sessions, queued messages and
        retained messages.
        """
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary data folder (if this broker made it)."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- clients
    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def client_tls(self, check_hostname: bool = True) -> TlsSettings | None:
        """The client-side TLS settings for this broker (``None`` without TLS)."""
        if self.tls is None:
            return None
        return TlsSettings(self.tls.ca_file, check_hostname=check_hostname)

    def link(self, username: str, client_id: str, **kwargs: Any) -> MqttLink:
        """An (unconnected) :class:`MqttLink` to this broker as ``username``.

        Args:
            username: One of :attr:`users`.
            client_id: MQTT client id.
            **kwargs: Further :class:`MqttLink` arguments (``will``, ``clean_start``, ...).

        Raises:
            KeyError: If the user is unknown.
        """
        user = self.users[username]
        kwargs.setdefault("tls", self.client_tls())
        return MqttLink(
            client_id,
            self.host,
            self.port,
            username=user.username,
            password=user.password,
            **kwargs,
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        tls = ", tls" if self.tls else ""
        return f"{type(self).__name__}({self.address}{tls}, {len(self.users)} users, {state})"
