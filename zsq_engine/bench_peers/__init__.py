"""The int8 engines a user would pick instead of zsq, built as latency contenders next to it.

``zsq bench`` and ``benchmarks/runtime.py`` time them side by side (``runtime.latency.measure``):

* ``fp32 torch.compile``: the float model, channels_last, compiled by Inductor (freezing on);
* ``torch.ao int8``: torch.ao FX x86 static quantization (``runtime.latency.torch_ao_x86_int8``);
* ``torchao pt2e int8``: torchao's PT2E flow with ``X86InductorQuantizer`` compiled by Inductor
  (oneDNN int8), the current PyTorch recommendation (optional package ``torchao``);
* ``onnxruntime``: the fake-quant model exported as QDQ ONNX (``zsq_engine.export``) on ONNX
  Runtime's CPU provider (optional package ``onnxruntime``).

A peer that cannot be built (package missing, tracing failure) is kept as a skipped entry with its
reason; every built contender is checked for top-1 agreement with a fake-quant model before it is
timed (``peer_set.check_and_split``; random-weight networks may pass on logit SQNR instead).
"""
from .peer_set import (INT8_PEERS, PEERS, Candidate, PeerStatus, check_and_split, logit_sqnr_db,
                       peer_candidates, skipped_rows)
from .ratios import add_peer_ratios
from .status import PeerUnavailable
from .versions import peer_versions

__all__ = ["PEERS", "INT8_PEERS", "Candidate", "PeerStatus", "PeerUnavailable", "peer_candidates",
           "check_and_split", "logit_sqnr_db", "skipped_rows", "add_peer_ratios", "peer_versions"]
