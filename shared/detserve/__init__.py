"""detserve: deploy trained object-detection models (ONNX) as real-time prediction services."""

__version__ = "0.1.0"
