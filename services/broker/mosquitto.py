"""Mosquitto (the Debian package's ``/usr/sbin/mosquitto``) as a subprocess with a generated config.

:class:`MosquittoBroker` writes, in its data folder:

* ``mosquitto.conf``: one listener on ``host:port`` (TLS-only with a certificate),
  ``allow_anonymous false``, ``persistence true`` (sessions, queued QoS≥1 messages and
  retained messages are saved on a graceful stop and every ``autosave_interval_s``, and
  reloaded at start), ``persistent_client_expiration`` and queue bounds;
* ``passwd``: the users' hashed passwords (``mosquitto_passwd -U``, sha512-pbkdf2);
* ``acl``: the per-site rules of :func:`pulsebms.services.broker.acl.mosquitto_acl`;
* ``mosquitto.log``: the broker's log (read it when something is refused).

The binary is looked up at ``/usr/sbin/mosquitto``, then on ``PATH``
(:func:`find_mosquitto`); a missing binary is a :class:`BrokerError` that says how to
install it. Run as root (containers, CI), the config sets ``user`` to the current user, so
Mosquitto does not drop to the ``mosquitto`` account that could not read the files.

Example:
    >>> from pulsebms.services.broker import MosquittoBroker, site_users
    >>> with MosquittoBroker(site_users(["s1"])) as broker:  # doctest: +SKIP
    ...     broker.restart()  # same port, sessions and queued messages kept
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import weakref
from collections.abc import Sequence
from pathlib import Path

from pulsebms.services.broker.acl import BrokerUser, mosquitto_acl
from pulsebms.services.broker.base import Broker, BrokerError, BrokerTls, wait_for_port

__all__ = ["MOSQUITTO_PATHS", "MosquittoBroker", "find_mosquitto"]

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
"""Where the Debian (and a source) install puts the broker binary."""

_INSTALL_HINT = "install it: apt-get install mosquitto (Debian/Ubuntu), or put it on PATH"


def find_mosquitto(name: str = "mosquitto") -> Path:
    """The path of a Mosquitto program (``mosquitto`` or ``mosquitto_passwd``).

    Raises:
        BrokerError: If it is neither in :data:`MOSQUITTO_PATHS` (their folder) nor on PATH.
    """
    for base in MOSQUITTO_PATHS:
        candidate = Path(base).with_name(name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise BrokerError(f"{name} not found in {MOSQUITTO_PATHS} or on PATH; {_INSTALL_HINT}")
    return Path(found)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Finaliser: never leave a broker process behind the interpreter."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


class MosquittoBroker(Broker):
    """Mosquitto with password file, per-site ACL file and persistence, on one listener.

    Args:
        users: Accounts; see :class:`~pulsebms.services.broker.base.Broker`.
        host: Listening address.
        port: Listening port (a free one when ``None``).
        tls: Serve TLS only.
        data_dir: Folder for the files (a temporary one when ``None``).
        autosave_interval_s: Persistence save period while running [s] (a graceful stop
            always saves).
        session_expiry_s: ``persistent_client_expiration``: how long a disconnected
            persistent client's session (and its queue) is kept [s], rounded up to
            whole hours (Mosquitto's smallest unit).
        max_queued_messages: QoS≥1 messages queued per client beyond those in flight
            (Mosquitto's default of 1000 is too small for a site's coordinator that
            is away for minutes).
        max_inflight_messages: QoS≥1 messages in flight per client.

    Raises:
        BrokerError: If ``mosquitto`` or ``mosquitto_passwd`` is not installed.
    """

    persistent = True
    name = "mosquitto"

    def __init__(
        self,
        users: Sequence[BrokerUser],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: BrokerTls | None = None,
        data_dir: str | Path | None = None,
        autosave_interval_s: int = 60,
        session_expiry_s: int = 86_400,
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 100,
    ) -> None:
        self.binary = find_mosquitto("mosquitto")
        self._passwd_tool = find_mosquitto("mosquitto_passwd")
        super().__init__(users, host=host, port=port, tls=tls, data_dir=data_dir)
        self.autosave_interval_s = int(autosave_interval_s)
        self.session_expiry_s = int(session_expiry_s)
        self.max_queued_messages = int(max_queued_messages)
        self.max_inflight_messages = int(max_inflight_messages)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], MosquittoBroker] | None = None
        self.config_file = self.data_dir / "mosquitto.conf"
        self.log_file = self.data_dir / "mosquitto.log"
        self._write_files()

    # ---------------------------------------------------------------- files
    def _write_files(self) -> None:
        d = self.data_dir
        (d / "data").mkdir(exist_ok=True)
        passwd = d / "passwd"
        # Plain "user:password" lines, hashed in place by one `mosquitto_passwd -U` call
        # (sha512-pbkdf2); the plain text never reaches a command line.
        passwd.touch(mode=0o600)
        passwd.chmod(0o600)
        passwd.write_text("".join(f"{u.username}:{u.password}\n" for u in self.users.values()))
        done = subprocess.run(
            [str(self._passwd_tool), "-U", str(passwd)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            passwd.unlink(missing_ok=True)
            raise BrokerError(f"mosquitto_passwd -U failed: {done.stderr.strip()}")
        acl = d / "acl"
        acl.write_text(mosquitto_acl(self.users.values()))
        acl.chmod(0o600)
        self.config_file.write_text(self.config_text())

    def config_text(self) -> str:
        """The ``mosquitto.conf`` this broker runs with."""
        d = self.data_dir
        lines = [
            "# Generated by pulsebms.services.broker.MosquittoBroker",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {d / 'passwd'}",
            f"acl_file {d / 'acl'}",
            "persistence true",
            f"persistence_location {d / 'data'}/",
            f"autosave_interval {self.autosave_interval_s}",
            f"persistent_client_expiration {max(1, -(-self.session_expiry_s // 3600))}h",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        if self.tls is not None:
            lines += [
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "tls_version tlsv1.2",
            ]
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the subprocess and wait until it listens.

        Raises:
            BrokerError: If it exits or does not listen within ``timeout_s`` (the message
                holds the end of its log).
        """
        if self.running:
            return
        with open(self.data_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill, proc)
        try:
            wait_for_port(self.host, self.port, timeout_s, alive=lambda: proc.poll() is None)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"mosquitto did not start: {exc}\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its persistence file), SIGKILL after ``timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._finalizer is not None:
            self._finalizer.detach()
        self._proc = None
        self._finalizer = None

    def kill(self) -> None:
        """SIGKILL, as a crash: what was not autosaved is lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self.stop()

    def log_tail(self, n_chars: int = 2000) -> str:
        """The end of the broker's log (and of its stdout/stderr)."""
        text = ""
        for path in (self.log_file, self.data_dir / "stdout.log"):
            if path.exists():
                text += path.read_text(errors="replace")[-n_chars:]
        return text
