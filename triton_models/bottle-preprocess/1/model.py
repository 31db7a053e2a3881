"""linewatch's preprocess model for Triton's Python backend (services/inference/triton_backend.py)."""

from services.inference.triton_backend import PreprocessModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
