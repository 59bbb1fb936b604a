"""The Backend protocol every runtime implements (ONNX Runtime here, TensorRT on GPU workers)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from detserve.errors import MissingDependencyError

__all__ = ["Backend", "MissingDependencyError"]


class Backend(Protocol):
    """Runs a batch through a loaded model and returns its raw outputs in ONNX output order."""

    @classmethod
    def from_package(cls, onnx_bytes: bytes, spec: dict[str, Any], **opts: Any) -> Backend:
        """Do the IO and heavy loading (session creation, engine build)."""
        ...

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Outputs named in the version's output spec, for the whole batch."""
        ...

    def close(self) -> None:
        """Release what the backend holds."""
        ...
