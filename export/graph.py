"""Torch module → ONNX bytes, with torch's ``torch.export``-based exporter (onnxscript).

The graph has one input, ``observation`` (float32 ``[batch, obs]``), and one output,
``action`` (float32 ``[batch, act]``); the batch axis is dynamic. Node metadata (source
stack traces) is stripped, so the bytes depend only on the module's code and weights: the
same checkpoint exports to the same sha256.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_proto", "to_onnx"]

INPUT_NAME = "observation"
"""Name of the graph input."""
OUTPUT_NAME = "action"
"""Name of the graph output."""
DEFAULT_OPSET = 18
"""ONNX opset of exported graphs (onnxruntime ≥ 1.14 runs it)."""


def _strip_metadata(model: onnx.ModelProto) -> None:
    del model.metadata_props[:]
    model.doc_string = ""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]


def export_proto(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    *,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export ``module`` with a dynamic batch axis (axis 0 of its one input), metadata stripped.

    Args:
        module: The module (put in eval mode); ``forward`` takes one batched tensor.
        example: One example input (batch ≥ 2, so the batch axis stays symbolic).
        input_name: Name of the graph input.
        output_name: Name of the graph output.
        opset: ONNX opset.

    Returns:
        The exported model, not yet checked or serialised (callers may add metadata).

    Raises:
        RuntimeError: If torch cannot export the module.
    """
    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch's own deprecations inside its exporter are not ours to fix.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            program = torch.onnx.export(
                module.eval(),
                example,
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    _strip_metadata(model)
    return model


def to_onnx(module: torch.nn.Module, observation_size: int, *, opset: int = DEFAULT_OPSET) -> bytes:
    """Export ``module`` (``[batch, obs] -> [batch, act]``) to ONNX bytes.

    Args:
        module: The deployed policy (eval mode); its ``forward`` takes ``observation``.
        observation_size: Length of one observation.
        opset: ONNX opset.

    Returns:
        The serialised, checked ONNX model.

    Raises:
        RuntimeError: If torch cannot export the module.
    """
    example = (torch.zeros(2, observation_size, dtype=torch.float32),)
    model = export_proto(module, example, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString(deterministic=True))
