"""A throwaway PostgreSQL server in a temporary folder, for tests and benchmarks.

:class:`TemporaryPostgres` runs the distribution's own server binaries (``initdb`` and
``postgres`` of the Debian ``postgresql`` package, ``/usr/lib/postgresql/<major>/bin``) on a
free local port, owns the server process and removes everything on exit. It never touches
a system service or its data.

PostgreSQL refuses to run as root. When this process is root (CI runs ``.ci/run`` as root),
the server runs as the unprivileged ``postgres`` user the package creates (else
``nobody``), through :func:`subprocess.Popen`'s ``user``/``group`` arguments.

Example:
    >>> with TemporaryPostgres() as pg:  # doctest: +SKIP
    ...     store = PostgresTelemetryStore(pg.conninfo)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresNotAvailable", "TemporaryPostgres", "find_postgres_bindir"]

_BIN_ROOT = Path("/usr/lib/postgresql")


class PostgresNotAvailable(RuntimeError):
    """No PostgreSQL server binaries were found, or the server did not start."""


def find_postgres_bindir() -> Path:
    """Folder of ``initdb`` and ``postgres``.

    Looked for, in order: ``$PULSEBMS_PG_BINDIR``; the newest
    ``/usr/lib/postgresql/<major>/bin``; ``initdb`` on ``PATH``.

    Raises:
        PostgresNotAvailable: When none holds both binaries.
    """
    candidates: list[Path] = []
    env = os.environ.get("PULSEBMS_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    if _BIN_ROOT.is_dir():
        majors = [p for p in _BIN_ROOT.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)]
        majors.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
        candidates.extend(p / "bin" for p in majors)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresNotAvailable(
        "PostgreSQL server binaries not found (looked in $PULSEBMS_PG_BINDIR, "
        f"{_BIN_ROOT}/<major>/bin and PATH); install the Debian package 'postgresql' "
        "(`.ci/run` does)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as (None: run as this process)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresNotAvailable("running as root and neither user 'postgres' nor 'nobody' exists")


class TemporaryPostgres:
    """A PostgreSQL server in a temporary folder, on a free local port (a context manager).

    Args:
        durable: Keep PostgreSQL's durability settings (``fsync``, synchronous commit,
            full-page writes). Off by default: a throwaway server need not survive a power
            cut, and tests run faster without.
        start_timeout_s: How long to wait for the server to accept connections.
        database: Name of the database created for the caller.
        parent: Folder to create the temporary folder in (default: the system's temporary
            folder); it must be traversable by the server's user.

    Attributes:
        conninfo: Connection URI of the database (set once started).
        port: TCP port on 127.0.0.1.
        folder: The temporary folder (data directory and socket).
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        start_timeout_s: float = 60.0,
        database: str = "pulsebms",
        parent: str | Path | None = None,
    ) -> None:
        self.parent = parent
        self.durable = durable
        self.start_timeout_s = float(start_timeout_s)
        self.database = database
        self.conninfo = ""
        self.port = 0
        self.folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._settings: list[str] = []
        self._user = _server_user()

    # ------------------------------------------------------------------ process helpers
    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        kw: dict[str, object] = {}
        if self._user is not None:
            kw = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        try:
            return subprocess.run(  # type: ignore[call-overload,no-any-return]
                args, capture_output=True, text=True, timeout=120, check=False, **kw
            )
        except (OSError, subprocess.SubprocessError) as exc:
            who = f" as user {self._user.pw_name!r}" if self._user else ""
            raise PostgresNotAvailable(f"{Path(args[0]).name}{who} could not run: {exc}") from exc

    def _log_tail(self) -> str:
        if self.folder is None:
            return ""
        log = self.folder / "server.log"
        with contextlib.suppress(OSError):
            return log.read_text(errors="replace")[-2000:]
        return ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TemporaryPostgres:
        """Create the cluster, start the server and create :attr:`database`.

        Raises:
            PostgresNotAvailable: Binaries missing, ``initdb`` failed, or the server did
                not accept connections within ``start_timeout_s`` (the message holds the
                server log's tail).
        """
        bindir = find_postgres_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="pulsebms-pg-", dir=self.parent))
        data = self.folder / "data"
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        try:
            init = self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        except PostgresNotAvailable:
            self.stop()
            raise
        if init.returncode != 0:
            self.stop()
            who = f" as user {self._user.pw_name!r}" if self._user else ""
            raise PostgresNotAvailable(
                f"initdb{who} failed ({init.returncode}): {init.stderr.strip()[-1500:]}"
            )
        self._settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.folder}",
        ]
        if not self.durable:
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                self._settings += ["-c", f"{name}=off"]
        for _attempt in range(3):
            self.port = _free_port()
            if self._launch(create_database=True):
                return self
            if "could not bind" not in self._log_tail():
                break
        tail = self._log_tail()
        self.stop()
        raise PostgresNotAvailable(
            f"PostgreSQL did not accept connections within {self.start_timeout_s:.0f} s; "
            f"server log:\n{tail}"
        )

    def restart(self) -> None:
        """Stop the server and start it again on the same data and port.

        The stop is a fast shutdown (it writes a checkpoint); the server comes back with
        empty shared buffers (a cold cache, for benchmarks). Clients reconnect (the store
        does so by itself).

        Raises:
            PostgresNotAvailable: Not started, or the server did not come back.
        """
        if self.folder is None or not self.conninfo:
            raise PostgresNotAvailable("restart() of a server that is not running")
        self._terminate()
        if not self._launch(create_database=False):
            tail = self._log_tail()
            self.stop()
            raise PostgresNotAvailable(f"PostgreSQL did not come back; server log:\n{tail}")

    def _launch(self, *, create_database: bool) -> bool:
        """Start ``postgres`` on :attr:`port`; True once it accepts connections."""
        if self.folder is None:
            return False
        bindir = find_postgres_bindir()
        data = self.folder / "data"
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - handed to the child
        kw: dict[str, object] = {}
        if self._user is not None:
            kw = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        try:
            self._proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), *self._settings],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **kw,
            )
        except OSError as exc:
            self.stop()
            raise PostgresNotAvailable(f"postgres could not run: {exc}") from exc
        finally:
            log.close()
        if self._wait_ready(create_database=create_database):
            return True
        self._terminate()
        return False

    def _wait_ready(self, *, create_database: bool) -> bool:
        import psycopg

        base = f"postgresql://postgres@127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(base + "/postgres", autocommit=True, connect_timeout=2) as db:
                    if create_database:
                        db.execute(f'CREATE DATABASE "{self.database}"')
                self.conninfo = f"{base}/{self.database}"
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast shutdown"
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the folder."""
        self._terminate()
        self.conninfo = ""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
