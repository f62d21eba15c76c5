"""Fixtures of the edge-runtime tests: a fake clock, buses, a codec, an exported policy."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import pytest
from edge_helpers import GOOD, N_PACKS, FakeClock

from pulsebms.edge_runtime.codec import CanCodec

_channels = itertools.count()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def channel() -> str:
    return f"pulsebms-test-{next(_channels)}"


@pytest.fixture
def buses(channel: str) -> Iterator[tuple[can.BusABC, can.BusABC]]:
    """(runtime bus, pack-side bus) on one virtual channel."""
    rt_bus = can.Bus(interface="virtual", channel=channel)
    pack_bus = can.Bus(interface="virtual", channel=channel)
    yield rt_bus, pack_bus
    rt_bus.shutdown()
    pack_bus.shutdown()


@pytest.fixture
def codec() -> CanCodec:
    return CanCodec(N_PACKS)


@pytest.fixture
def telemetry_sender(codec: CanCodec) -> Callable[..., list[can.Message]]:
    """Build telemetry frames with a per-pack rolling counter."""
    counters = [0] * N_PACKS

    def frames(pack: int, status: int = 0, **values: float) -> list[can.Message]:
        msgs = codec.encode_telemetry(
            pack, {**GOOD, **values}, status=status, counter=counters[pack]
        )
        counters[pack] += 1
        return msgs

    return frames


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO on FleetSmall, exported; returns the manifest path."""
    from pulsebms.export import export_checkpoint
    from pulsebms.export.testing import tiny_sb3_checkpoint

    ckpt = tiny_sb3_checkpoint(tmp_path_factory.mktemp("edge_ckpt"))
    out = tmp_path_factory.mktemp("edge_deploy")
    export_checkpoint(ckpt, out, env_id="PulseBMS/FleetSmall-v0", n_parity=50)
    return out / "manifest.json"
