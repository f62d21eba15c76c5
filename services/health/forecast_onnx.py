"""The SoH forecaster as ONNX: export, an onnxruntime session, and the parity gate.

:func:`export_forecaster` writes the trained :class:`~pulsebms.services.health.forecast.
SohLstm` — input normalisation, every ensemble member's LSTM and head, and the anchor all
inside the graph — with torch's ``torch.export``-based exporter (the project's exporter,
:mod:`pulsebms.export.graph`, does the same for policies). The graph has one input
``windows`` (float32 ``[batch, lookback, n_inputs]``, raw features as
:func:`~pulsebms.services.health.forecast.pack_inputs` builds them; the batch axis is
dynamic) and one output ``soh`` (float32 ``[batch]``). The model's horizon, lookback, prior
and NaN fill values travel as ONNX metadata, so the file alone is enough to forecast
(:class:`OnnxForecaster`).

:func:`check_parity` runs both on the same windows and refuses the export
(:class:`ParityError`) when they differ by more than ``atol`` anywhere.

Example:
    >>> import numpy as np, torch
    >>> from pulsebms.services.health.forecast import SohLstm
    >>> torch.manual_seed(0) and None
    >>> model = SohLstm(3, 4, np.zeros(3), np.ones(3), horizon=10, lookback=5).eval()
    >>> data = export_forecaster(model, fill=np.zeros(3))
    >>> onnx_model = OnnxForecaster(data)
    >>> onnx_model.horizon, onnx_model.lookback
    (10, 5)
    >>> x = np.random.default_rng(0).uniform(size=(2, 5, 3))
    >>> check_parity(model, onnx_model, x) < 1e-5
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pulsebms.core.types import FloatArray

if TYPE_CHECKING:  # torch and onnx are needed to export and to check, not to forecast
    from pulsebms.services.health.forecast import SohLstm

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxForecaster",
    "ParityError",
    "check_parity",
    "export_forecaster",
    "max_abs_difference",
]

INPUT_NAME = "windows"
"""Name of the graph input."""
OUTPUT_NAME = "soh"
"""Name of the graph output."""
_OPSET = 18
_META_KEY = "pulsebms.health.forecaster"


class ParityError(RuntimeError):
    """An ONNX export and the model it came from disagree (torch or scikit-learn)."""


def max_abs_difference(ours: FloatArray, ref: FloatArray, *, atol: float, reference: str) -> float:
    """Largest |``ref`` − ``ours``| (0 for no rows); raises when above ``atol``.

    Args:
        ours: The onnxruntime outputs.
        ref: The source model's outputs for the same rows.
        atol: Largest difference accepted.
        reference: Name of the source model's library, for the error.

    Raises:
        ParityError: If the two disagree by more than ``atol``.
    """
    worst = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref)))) if np.size(ours) else 0.0
    if not worst <= atol:
        raise ParityError(f"onnxruntime differs from {reference} by {worst:.3g} > {atol:.3g}")
    return worst


def export_forecaster(model: SohLstm, *, fill: FloatArray) -> bytes:
    """Export a trained forecaster to ONNX bytes (see the module docstring).

    Args:
        model: The trained model (put in eval mode here).
        fill: The NaN fill values it was trained with (stored as metadata).

    Returns:
        The serialised, checked ONNX model.

    Raises:
        RuntimeError: If torch cannot export the model.
    """
    import onnx
    import torch

    from pulsebms.export.graph import export_proto

    n_inputs = int(model.mean.numel())
    example = (torch.zeros(2, model.lookback, n_inputs, dtype=torch.float32),)
    proto = export_proto(
        model, example, input_name=INPUT_NAME, output_name=OUTPUT_NAME, opset=_OPSET
    )
    meta = {
        "horizon_cycles": model.horizon,
        "lookback_cycles": model.lookback,
        "prior": model.prior,
        "n_inputs": n_inputs,
        "fill": [float(v) for v in np.asarray(fill, dtype=np.float64)],
    }
    entry = proto.metadata_props.add()
    entry.key = _META_KEY
    entry.value = json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(proto, full_check=True)
    return bytes(proto.SerializeToString(deterministic=True))


class OnnxForecaster:
    """The exported forecaster on onnxruntime (one CPU thread, deterministic).

    Only onnxruntime is needed (the metadata is read through it), not torch or onnx.

    Args:
        model: ONNX bytes from :func:`export_forecaster`, or a path to them.

    Raises:
        ValueError: If the model lacks the forecaster's metadata.
    """

    def __init__(self, model: bytes | str | Path) -> None:
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        if _META_KEY not in meta:
            raise ValueError(f"not a PulseBMS SoH forecaster (no {_META_KEY!r} metadata)")
        info = json.loads(meta[_META_KEY])
        self.horizon = int(info["horizon_cycles"])
        self.lookback = int(info["lookback_cycles"])
        self.prior = str(info["prior"])
        self.n_inputs = int(info["n_inputs"])
        self.fill = np.asarray(info["fill"], dtype=np.float64)

    @property
    def anchor_index(self) -> int:
        """Input column the network corrects (0: capacity estimate; last: fade-law prior)."""
        return 0 if self.prior == "capacity" else self.n_inputs - 1

    def predict_fade(self, windows: FloatArray) -> FloatArray:
        """SoH the pack loses over the horizon: each window's anchor minus its forecast.

        Adding it to another estimate of SoH now (the health score) gives a forecast
        consistent with that estimate: the published ``soh_forecast`` is
        ``health_score − fade``, so that the two fields of a message differ only by the
        fade the model foresees, not by two estimators' noise.
        """
        x = np.asarray(windows, dtype=np.float64)
        if x.shape[0] == 0:
            return np.zeros(0)
        anchor = x[:, -1, self.anchor_index]
        return np.asarray(anchor - self.predict(x), dtype=np.float64)

    def predict(self, windows: FloatArray) -> FloatArray:
        """SoH forecasts for windows ``[batch, lookback, n_inputs]`` (float64 out).

        Raises:
            ValueError: On windows of the wrong shape.
        """
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.lookback, self.n_inputs):
            raise ValueError(
                f"windows must be [batch, {self.lookback}, {self.n_inputs}], got {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros(0)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return np.asarray(out, dtype=np.float64)


def check_parity(
    model: SohLstm, onnx_model: OnnxForecaster, windows: FloatArray, *, atol: float = 1e-5
) -> float:
    """Largest |torch − onnxruntime| over ``windows``; raises when above ``atol``.

    Raises:
        ParityError: If the two disagree by more than ``atol``.
    """
    import torch

    ours = onnx_model.predict(windows)
    with torch.no_grad():
        ref = model.eval()(torch.as_tensor(np.asarray(windows, dtype=np.float32))).numpy()
    return max_abs_difference(ours, ref, atol=atol, reference="torch")
