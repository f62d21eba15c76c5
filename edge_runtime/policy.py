"""The exported policy as an onnxruntime session: raw observation in, clipped action out.

Observation normalisation and action clipping are inside the graph (see
:mod:`pulsebms.export`), so this module only feeds float32 observations and reads actions.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

__all__ = ["OnnxPolicy"]


class OnnxPolicy:
    """A deterministic ONNX policy on the CPU execution provider.

    Args:
        model: The verified model bytes (see
            :meth:`pulsebms.edge_runtime.manifest.Manifest.read_verified_model`).
        observation_size: Expected length of one observation.
        action_size: Expected length of one action.
        input_name: Name of the graph's observation input.
        output_name: Name of the graph's action output.
        intra_op_threads: onnxruntime intra-op threads; 1 keeps latency steady on a small
            device and leaves cores to the CAN I/O.
        warmup: Run one inference on zeros now, so the first control tick does not pay for
            onnxruntime's lazy allocations.

    Raises:
        ValueError: If the graph's input or output does not match the manifest.

    Example:
        >>> policy = OnnxPolicy(model_bytes, 8, 2, "observation", "action")  # doctest: +SKIP
        >>> policy.act(np.zeros(8, dtype=np.float32)).shape  # doctest: +SKIP
        (2,)
    """

    def __init__(
        self,
        model: bytes,
        observation_size: int,
        action_size: int,
        input_name: str = "observation",
        output_name: str = "action",
        *,
        intra_op_threads: int = 1,
        warmup: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if input_name not in inputs or output_name not in outputs:
            raise ValueError(
                f"model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the manifest "
                f"names input {input_name!r} and output {output_name!r}"
            )
        last_dim = inputs[input_name].shape[-1]
        if isinstance(last_dim, int) and last_dim != observation_size:
            raise ValueError(
                f"model input {input_name!r} has {last_dim} features, the manifest says "
                f"{observation_size}"
            )
        self.observation_size = observation_size
        self.action_size = action_size
        self.input_name = input_name
        self.output_name = output_name
        if warmup:
            self.act(np.zeros(observation_size, dtype=np.float32))

    def act(self, observation: NDArray[np.floating]) -> NDArray[np.float32]:
        """Return the action for one observation.

        Args:
            observation: Flat observation of length ``observation_size``.

        Returns:
            The action, float32 of length ``action_size`` (may hold NaN if the input did:
            the caller's shield handles non-finite actions).

        Raises:
            ValueError: If the observation has the wrong size or the output the wrong shape.
        """
        obs = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        if obs.shape[1] != self.observation_size:
            raise ValueError(
                f"observation has {obs.shape[1]} entries, the policy expects "
                f"{self.observation_size}"
            )
        (out,) = self._session.run([self.output_name], {self.input_name: obs})
        action = np.asarray(out, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_size,):
            raise ValueError(
                f"policy returned an action of shape {action.shape}, expected ({self.action_size},)"
            )
        return action
