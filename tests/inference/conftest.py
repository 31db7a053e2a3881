"""The synthetic-line model of the line's tests, for the inference port's contract tests."""

from tests.stream.conftest import inspector, model_dir

__all__ = ["inspector", "model_dir"]
