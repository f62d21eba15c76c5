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
import logging
import warnings
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
]

INPUT_NAME = "windows"
"""Name of the graph input."""
OUTPUT_NAME = "soh"
"""Name of the graph output."""
_OPSET = 18
_META_KEY = "pulsebms.health.forecaster"


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the forecaster's output."""


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

    n_inputs = int(model.mean.numel())
    example = (torch.zeros(2, model.lookback, n_inputs, dtype=torch.float32),)
    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch's own notices inside its exporter are not ours to fix.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            program = torch.onnx.export(
                model.eval(),
                example,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=_OPSET,
                optimize=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    del proto.metadata_props[:]
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
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
    worst = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    if not worst <= atol:
        raise ParityError(f"onnxruntime differs from torch by {worst:.3g} > {atol:.3g}")
    return worst
