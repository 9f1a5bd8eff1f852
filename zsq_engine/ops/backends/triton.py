"""Triton kernels (``zsq_engine.kernels``), registered under the 'triton' backend.

Importing this module must not fail without Triton: kernels are registered only when Triton
and the kernel package import. (The fused kernels arrive with the fake-quant and integer
GEMM/conv work; until then this backend has no ops and dispatch falls back to the reference.)
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
    import zsq_engine.kernels  # noqa: F401
except Exception:  # pragma: no cover - depends on the machine
    pass
