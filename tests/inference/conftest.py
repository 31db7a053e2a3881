"""The synthetic-line model of the line's tests, and a real tritonserver serving it, for the
inference port's contract tests."""

from tests.triton_server import triton, triton_repo

__all__ = ["triton", "triton_repo"]
