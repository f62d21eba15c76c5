"""Helpers shared by the edge-runtime tests (imported as ``edge_helpers``)."""

from __future__ import annotations

import numpy as np

from pulsebms.edge_runtime.manifest import (
    ActionField,
    Manifest,
    ModelInfo,
    ObsField,
    SourceInfo,
)
from pulsebms.safety.limits import default_limits

N_PACKS = 3


class FakeClock:
    """Settable monotonic clock [s]."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_manifest(n_packs: int = N_PACKS, sha256: str = "0" * 64) -> Manifest:
    """A small NMC fleet: observation = SoC, temperature / 50, demand / 1 kW, time sin."""
    n = n_packs
    return Manifest(
        model=ModelInfo("policy.onnx", sha256, "observation", "action", 2 * n + 2, n, 18),
        source=SourceInfo("sb3", "PPO", "/nowhere/model.zip", "1" * 64),
        observation=(
            ObsField("soc", 0, n, "fraction", 1.0, 0.0, 1.0),
            ObsField("temperature_c", n, 2 * n, "degC", 50.0, -2, 2),
            ObsField("demand_w", 2 * n, 2 * n + 1, "W", 1000.0, -20, 20),
            ObsField("time_of_day_sin", 2 * n + 1, 2 * n + 2),
        ),
        action=(ActionField("power_setpoint", 0, n),),
        ratings={
            "chemistry": ["NMC"] * n,
            "series": [14] * n,
            "parallel": [4] * n,
            "cell_capacity_ah": [5.0] * n,
            "rated_power_w": [1000.0] * n,
        },
        limits=tuple(vars(default_limits("NMC")) for _ in range(n)),
        shield={"dt_s": 60.0},
        dt_s=60.0,
        versions={"pulsebms": "test"},
        created_utc="2026-01-01T00:00:00+00:00",
    )


class ConstantPolicy:
    """Returns a fixed action and records the observations it saw."""

    def __init__(self, action: list[float]) -> None:
        self.action = np.asarray(action, dtype=np.float32)
        self.seen: list[np.ndarray] = []

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(observation))
        return self.action.copy()


GOOD = {
    "soc": 0.5,
    "soh": 0.98,
    "temperature_c": 25.0,
    "cell_voltage_v": 3.7,
    "current_a": 1.0,
}


def constant_onnx(observation_size: int, action_size: int, value: float) -> bytes:
    """An ONNX graph with the exporter's I/O names that always outputs ``value``."""
    from onnx import TensorProto, helper

    def const(name: str, dtype: int, dims: list[int], vals: list[float]) -> object:
        return helper.make_tensor(name, dtype, dims, vals)

    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["observation", "start", "stop", "axis"], ["head"]),
            helper.make_node("Mul", ["head", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "value"], ["action"]),
        ],
        "constant_policy",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["b", observation_size])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["b", action_size])],
        [
            const("start", TensorProto.INT64, [1], [0]),
            const("stop", TensorProto.INT64, [1], [action_size]),
            const("axis", TensorProto.INT64, [1], [1]),
            const("zero", TensorProto.FLOAT, [], [0.0]),
            const("value", TensorProto.FLOAT, [], [value]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return bytes(model.SerializeToString())


def collect_broker_garbage() -> None:
    """Collect what a stopped embedded broker left to the GC, without ResourceWarnings.

    amqtt 0.12 leaves the transports of some closed client connections to the garbage
    collector; collected after its event loop is closed they warn "unclosed transport",
    which pytest (warnings as errors) would report against whichever test runs next.
    """
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
