"""Edge runtime: ONNX policy + safety shield + CAN I/O + watchdog, for a device.

Imports only numpy, onnxruntime, python-can, cantools, the standard library and
:mod:`pulsebms.safety`. The hardware-in-the-loop simulator lives apart, in
:mod:`pulsebms.hil` (it imports the simulation stack); nothing here imports it.

The names below load on first use, so that importing one module (say
:mod:`pulsebms.edge_runtime.policy`, which evaluation shares) does not import the CAN stack.

Example:
    >>> import can
    >>> from pulsebms.edge_runtime import EdgeRuntime
    >>> bus = can.Bus(interface="virtual", channel="demo")  # doctest: +SKIP
    >>> runtime = EdgeRuntime.from_files("deploy/manifest.json", bus=bus)  # doctest: +SKIP
    >>> runtime.run(n_ticks=10)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pulsebms.edge_runtime.codec import CanCodec, SignalMap, SignalRef, default_dbc_path
    from pulsebms.edge_runtime.manifest import (
        Manifest,
        ManifestError,
        ManifestIntegrityError,
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
    "ManifestIntegrityError",
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

_LAZY = {
    "CanCodec": "codec",
    "SignalMap": "codec",
    "SignalRef": "codec",
    "default_dbc_path": "codec",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "ManifestIntegrityError": "manifest",
    "ModelIntegrityError": "manifest",
    "load_manifest": "manifest",
    "OnnxPolicy": "policy",
    "EdgeRuntime": "runtime",
    "RuntimeEvent": "runtime",
    "RuntimeMetrics": "runtime",
    "SafeReason": "runtime",
    "TickReport": "runtime",
    "TelemetryStore": "telemetry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"pulsebms.edge_runtime.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'pulsebms.edge_runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
