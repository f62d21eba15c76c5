"""Errors raised by the exporter."""

from __future__ import annotations

__all__ = ["ExportError", "ParityError"]


class ExportError(RuntimeError):
    """The checkpoint cannot be exported as asked (nothing was written)."""


class ParityError(ExportError):
    """onnxruntime's actions differ from the source policy's beyond the tolerance.

    Attributes:
        max_abs_diff: The largest absolute difference found.
        tolerance: The tolerance it exceeded.
    """

    def __init__(self, message: str, *, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
