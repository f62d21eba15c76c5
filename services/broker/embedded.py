"""The embedded default broker: amqtt in-process, in its own thread and event loop.

Nothing to install beyond the ``services`` extra. :class:`EmbeddedBroker` runs an
``amqtt.broker.Broker`` on a private asyncio loop in a daemon thread, so it can be used from
synchronous code (tests, notebooks, ``pulsebms-fleet up``) and stopped cleanly.

Configuration:

* one TCP listener on ``host:port`` (TLS with a :class:`~pulsebms.services.broker.BrokerTls`);
* authentication by amqtt's ``FileAuthPlugin``: a password file of Argon2id hashes
  (OWASP's minimum parameters) written with ``pwdlib`` (an amqtt dependency) from the users
  at construction; anonymous clients are refused;
* the per-site rules by :class:`~pulsebms.services.broker.amqtt_acl.SiteAclPlugin` (publish,
  subscribe and per-message receive checks).

What it lacks, compared with Mosquitto: **no persistence** (``persistent = False``). amqtt
0.12 keeps sessions, queued messages and retained messages in memory only, and its
``start()`` clears them; its ``SessionDBPlugin`` would need SQLAlchemy and aiosqlite, which
PulseBMS does not install. After :meth:`~pulsebms.services.broker.base.Broker.restart`,
clients reconnect and re-subscribe (:class:`~pulsebms.edge_runtime.mqtt_link.MqttLink`
sees ``session_present`` false), and their own QoS≥1 queues are re-sent, but messages
published while a subscriber had not yet re-subscribed are lost, and retained messages
(status, allocation) are gone until re-published. It speaks MQTT 3.1.1 only. Use
Mosquitto where a broker restart must lose nothing.

Example:
    >>> from pulsebms.services.broker import EmbeddedBroker, site_users
    >>> broker = EmbeddedBroker(site_users(["s1"], password="pw"))
    >>> broker.start()
    >>> link = broker.link("edge-s1", "edge-1")
    >>> link.connect(timeout_s=10.0)
    True
    >>> link.close(); broker.close()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pulsebms.services.broker.acl import BrokerUser, publish_rules, subscribe_rules
from pulsebms.services.broker.base import Broker, BrokerError, BrokerTls

__all__ = ["EmbeddedBroker"]

_ACL_PLUGIN = "pulsebms.services.broker.amqtt_acl.SiteAclPlugin"


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration runs over a snapshot of its keys/items.

    amqtt 0.12.1 iterates its subscription table (``Broker._subscriptions``) across
    ``await`` points: ``_handle_client_session`` (retained messages for a connecting
    client), ``_run_broadcast`` (with a RECEIVE check per subscriber, which the ACL plugin
    makes) and ``_del_all_subscriptions``. A subscription made by another client meanwhile
    raises ``RuntimeError: dictionary changed size during iteration`` inside amqtt, which
    drops the connecting client's session or a broadcast. Iterating over a snapshot keeps
    amqtt's behaviour and removes the race.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]  # a snapshot
        return list(dict.items(self))

    def keys(self) -> list[str]:  # type: ignore[override]  # a snapshot
        return list(dict.keys(self))

    def values(self) -> list[Any]:  # type: ignore[override]  # a snapshot
        return list(dict.values(self))


_AUTH_PLUGIN = "amqtt.plugins.authentication.FileAuthPlugin"


class EmbeddedBroker(Broker):
    """amqtt in a background thread, with password file and per-site ACL.

    Args:
        users: Accounts; see :class:`~pulsebms.services.broker.base.Broker`.
        host: Listening address.
        port: Listening port (a free one when ``None``).
        tls: Serve TLS only.
        data_dir: Folder for the password file (a temporary one when ``None``).
        quiet: Keep amqtt's loggers at WARNING (its INFO lines log every connection).
    """

    persistent = False
    name = "embedded"

    def __init__(
        self,
        users: Sequence[BrokerUser],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: BrokerTls | None = None,
        data_dir: str | Path | None = None,
        quiet: bool = True,
    ) -> None:
        super().__init__(users, host=host, port=port, tls=tls, data_dir=data_dir)
        self.password_file = self.data_dir / "passwd"
        self._write_password_file()
        if quiet:
            logging.getLogger("amqtt").setLevel(logging.WARNING)
            logging.getLogger("transitions").setLevel(logging.WARNING)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    def _write_password_file(self) -> None:
        from pwdlib.hashers.argon2 import Argon2Hasher

        # OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): ~0.1 s per hash or
        # check. pwdlib's default (64 MiB, 3 passes, 4 lanes) costs ~0.5 s, paid on every
        # client connection inside the broker's event loop.
        hasher = Argon2Hasher(time_cost=2, memory_cost=19_456, parallelism=1)
        hashes: dict[str, str] = {}  # users that share a password share one salted hash
        lines = []
        for u in self.users.values():
            if u.password not in hashes:
                hashes[u.password] = hasher.hash(u.password)
            lines.append(f"{u.username}:{hashes[u.password]}")
        self.password_file.touch(mode=0o600)
        self.password_file.chmod(0o600)
        self.password_file.write_text("\n".join(lines) + "\n")

    def config(self) -> dict[str, Any]:
        """The amqtt broker configuration (a ``BrokerConfig`` dictionary)."""
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls is not None:
            listener.update(
                ssl=True, certfile=str(self.tls.cert_file), keyfile=str(self.tls.key_file)
            )
        users = list(self.users.values())
        return {
            "listeners": {"default": listener},
            "timeout_disconnect_delay": 0,
            "plugins": {
                _AUTH_PLUGIN: {"password_file": str(self.password_file)},
                _ACL_PLUGIN: {"publish": publish_rules(users), "subscribe": subscribe_rules(users)},
            },
        }

    # ---------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether the broker's loop thread runs a started broker."""
        return self._broker is not None and self._thread is not None and self._thread.is_alive()

    def _submit(self, coro: Any) -> Future[Any]:
        if self._loop is None:
            raise BrokerError("the embedded broker's loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the loop thread and the broker; wait until it listens.

        Raises:
            BrokerError: If amqtt fails to start (port taken, bad certificate, ...).
        """
        if self.running:
            return
        from amqtt.broker import Broker as AmqttBroker

        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"amqtt-{self.port}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread

        async def _start() -> Any:
            broker = AmqttBroker(self.config(), loop=loop)
            broker._subscriptions = _SnapshotDict()  # see _SnapshotDict: an amqtt race
            await broker.start()
            return broker

        try:
            # listening once start() returns (no probe connection: amqtt logs each one)
            self._broker = self._submit(_start()).result(timeout_s)
        except Exception as exc:
            self._broker = None
            self._stop_loop()
            raise BrokerError(f"amqtt did not start on {self.address}: {exc}") from exc

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Shut the broker down (closing every client connection) and end its thread."""
        broker, self._broker = self._broker, None
        if broker is not None and self._loop is not None and not self._loop.is_closed():
            try:
                self._submit(broker.shutdown()).result(timeout_s)
            except Exception:  # a failed shutdown still ends the loop below
                logging.getLogger(__name__).warning("amqtt shutdown failed", exc_info=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        if not loop.is_closed():

            async def _cancel_rest() -> None:
                tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task(loop)]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(_cancel_rest(), loop).result(10.0)
            except Exception:
                logging.getLogger(__name__).debug("cancelling amqtt tasks failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10.0)
        if not loop.is_running() and not loop.is_closed():
            loop.close()
