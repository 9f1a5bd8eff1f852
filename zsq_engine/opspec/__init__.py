"""Descriptions shared by the op layer (``zsq_engine.ops``) and the kernels (``zsq_engine.kernels``).

A leaf package: it imports only torch, so both layers import it and neither imports the other
the wrong way round. It holds what an op *is* rather than how it runs: the dtype and activation
constants, the integer epilogue description, the int4 packing format, the BN-statistics loss
variants and the argument checks. See docs/architecture.md, "Ops and kernels".
"""
