"""Identity fingerprints: a short, stable hash of a model's weights, used to tell whether a saved
file (synthesis output, QAT checkpoint) was made from the same weights as the model at hand."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits of SHA-256 over every state-dict entry's name and raw bytes, in order.

    Raw bytes rather than values: two models agree only when every buffer and parameter is
    bit-identical (dtype included), which is what resuming or reusing a file needs."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
