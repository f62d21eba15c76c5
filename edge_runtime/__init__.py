"""Edge runtime: ONNX policy + safety shield + CAN I/O + watchdog, for a device.

Imports only numpy, onnxruntime, python-can, cantools, the standard library and
:mod:`pulsebms.safety`. The hardware-in-the-loop simulator, :mod:`pulsebms.edge_runtime.hil`,
imports the simulation stack and is not imported here.

Example:
    >>> import can
    >>> from pulsebms.edge_runtime import EdgeRuntime
    >>> bus = can.Bus(interface="virtual", channel="demo")  # doctest: +SKIP
    >>> runtime = EdgeRuntime.from_files("deploy/manifest.json", bus=bus)  # doctest: +SKIP
    >>> runtime.run(n_ticks=10)  # doctest: +SKIP
"""

from __future__ import annotations

from pulsebms.edge_runtime.codec import CanCodec, SignalMap, SignalRef, default_dbc_path
from pulsebms.edge_runtime.manifest import (
    Manifest,
    ManifestError,
    ModelIntegrityError,
    load_manifest,
)
from pulsebms.edge_runtime.policy import OnnxPolicy
from pulsebms.edge_runtime.runtime import (
    EdgeRuntime,
    RuntimeEvent,
    RuntimeMetrics,
    SafeReason,
    TickReport,
)
from pulsebms.edge_runtime.telemetry import TelemetryStore

__all__ = [
    "CanCodec",
    "EdgeRuntime",
    "Manifest",
    "ManifestError",
    "ModelIntegrityError",
    "OnnxPolicy",
    "RuntimeEvent",
    "RuntimeMetrics",
    "SafeReason",
    "SignalMap",
    "SignalRef",
    "TelemetryStore",
    "TickReport",
    "default_dbc_path",
    "load_manifest",
]
