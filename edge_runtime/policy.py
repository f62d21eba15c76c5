"""The one ONNX policy of PulseBMS: evaluation and the edge run the same session.

An exported ``policy.onnx`` has observation normalisation, the deterministic action head
and action clipping inside the graph (see :mod:`pulsebms.export`), so :class:`OnnxPolicy`
only feeds the raw observation as float32 and reads the action. The evaluation harness
(``pulsebms.agents.policy.OnnxPolicy`` is this class) and the edge runtime open it with the
same :func:`session_options`, so what was evaluated is what runs on the device.

Imports numpy only; onnxruntime is imported when the first session is opened, so that
``pulsebms.agents`` can name this class without onnxruntime installed.

Example:
    >>> opts = session_options()
    >>> opts.intra_op_num_threads, opts.inter_op_num_threads
    (1, 1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pulsebms.core.types import ActArray, AnyArray

if TYPE_CHECKING:
    import onnxruntime as ort

    from pulsebms.edge_runtime.manifest import Manifest

__all__ = ["OnnxPolicy", "session_options"]


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """The onnxruntime session options of every PulseBMS policy session.

    * ``intra_op_num_threads = intra_op_threads`` (1 by default: steady latency on a small
      device, cores left to the CAN I/O, and reductions always summed in one order);
    * ``inter_op_num_threads = 1`` and ``ORT_SEQUENTIAL`` execution: nodes run one after
      another in graph order;
    * ``ORT_ENABLE_ALL`` graph optimisation (onnxruntime's default, stated so that it
      cannot differ between evaluation and the edge);
    * log severity 3 (errors only).

    Args:
        intra_op_threads: onnxruntime intra-op threads (>= 1).

    Returns:
        Fresh options.

    Raises:
        ValueError: If ``intra_op_threads`` < 1.
    """
    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _static_last_dim(shape: object) -> int | None:
    if isinstance(shape, list | tuple) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    return None


class OnnxPolicy:
    """A deterministic ONNX policy on onnxruntime's CPU execution provider.

    Satisfies :class:`pulsebms.agents.type_aliases.Policy` (``act(observation) -> action``).

    Args:
        model: The model: its bytes (on the edge, the bytes whose sha256 the manifest
            verified, see :meth:`from_manifest`) or the path of a ``.onnx`` file.
        observation_size: Expected length of one observation; the graph's (static) input
            width when ``None``. Checked against the graph when both are known.
        action_size: Expected length of one action; the graph's (static) output width
            when ``None``. Checked against the graph when both are known, and on each
            action.
        input_name: Graph input to feed; the graph's first input when ``None``.
        output_name: Graph output holding the action; the graph's first output when
            ``None``.
        intra_op_threads: onnxruntime intra-op threads (see :func:`session_options`).
        warmup: Run one inference on zeros now (when the observation size is known), so
            the first control tick does not pay for onnxruntime's lazy allocations.

    Raises:
        ValueError: If the graph's input or output does not match the names or sizes.

    Example:
        >>> policy = OnnxPolicy("deploy/policy.onnx")  # doctest: +SKIP
        >>> policy = OnnxPolicy(model_bytes, 8, 2, "observation", "action")  # doctest: +SKIP
        >>> policy.act(np.zeros(8, dtype=np.float32)).shape  # doctest: +SKIP
        (2,)
    """

    def __init__(
        self,
        model: bytes | str | os.PathLike[str],
        observation_size: int | None = None,
        action_size: int | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        *,
        intra_op_threads: int = 1,
        warmup: bool = True,
    ) -> None:
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else os.fspath(model)
        self._session = ort.InferenceSession(
            source,
            sess_options=session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        in_name = input_name or self._session.get_inputs()[0].name
        out_name = output_name or self._session.get_outputs()[0].name
        if in_name not in inputs or out_name not in outputs:
            raise ValueError(
                f"model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
                f"input {in_name!r} and output {out_name!r}"
            )
        graph_obs = _static_last_dim(inputs[in_name].shape)
        if observation_size is not None and graph_obs is not None and graph_obs != observation_size:
            raise ValueError(
                f"model input {in_name!r} has {graph_obs} features, expected {observation_size}"
            )
        self.observation_size: int | None = (
            observation_size if observation_size is not None else graph_obs
        )
        graph_act = _static_last_dim(outputs[out_name].shape)
        if action_size is not None and graph_act is not None and graph_act != action_size:
            raise ValueError(
                f"model output {out_name!r} has {graph_act} entries, expected {action_size}"
            )
        self.action_size: int | None = action_size if action_size is not None else graph_act
        self.input_name = in_name
        self.output_name = out_name
        if warmup and self.observation_size is not None:
            self.act(np.zeros(self.observation_size, dtype=np.float32))

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest | str | Path,
        model_path: str | Path | None = None,
        *,
        intra_op_threads: int = 1,
        warmup: bool = True,
    ) -> OnnxPolicy:
        """Open the policy of an export, after checking the model's sha256.

        Args:
            manifest: A loaded manifest or the path of ``manifest.json``.
            model_path: ``policy.onnx``; ``model.file`` beside the manifest by default.
            intra_op_threads: onnxruntime intra-op threads.
            warmup: See the class.

        Returns:
            The policy, with the manifest's sizes and I/O names.

        Raises:
            ManifestError: If the manifest is invalid.
            ModelIntegrityError: If the model's sha256 differs from the manifest's.
            FileNotFoundError: If the model file does not exist.
        """
        from pulsebms.edge_runtime.manifest import Manifest, load_manifest

        loaded = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        info = loaded.model
        return cls(
            loaded.read_verified_model(model_path),
            info.observation_size,
            info.action_size,
            info.input_name,
            info.output_name,
            intra_op_threads=intra_op_threads,
            warmup=warmup,
        )

    def act(self, observation: AnyArray) -> ActArray:
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
        if self.observation_size is not None and obs.shape[1] != self.observation_size:
            raise ValueError(
                f"observation has {obs.shape[1]} entries, the policy expects "
                f"{self.observation_size}"
            )
        (out,) = self._session.run([self.output_name], {self.input_name: obs})
        action: ActArray = np.asarray(out, dtype=np.float32).reshape(-1)
        if self.action_size is not None and action.shape != (self.action_size,):
            raise ValueError(
                f"policy returned an action of shape {action.shape}, expected ({self.action_size},)"
            )
        return action

    def __repr__(self) -> str:
        return (
            f"OnnxPolicy(input={self.input_name!r} [{self.observation_size}], "
            f"output={self.output_name!r} [{self.action_size}])"
        )
