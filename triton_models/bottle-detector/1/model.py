"""linewatch's detector model for Triton's Python backend (services/inference/triton_backend.py)."""

from services.inference.triton_backend import DetectorModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
