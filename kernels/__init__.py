"""Triton kernels of zsq_engine; imported lazily, only when triton is installed."""
