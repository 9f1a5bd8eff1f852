"""``ChannelClamp``: ``clamp(x, 0, upper[c])`` per channel, what a ReLU6 becomes after equalisation."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelClamp", "restore_channel_clamps"]


class ChannelClamp(nn.Module):
    """``y[:, c] = clamp(x[:, c], 0, upper[c])`` for ``x`` of shape ``[N, C, ...]``.

    Equalisation divides channel ``c`` of a ReLU6's input by ``s[c] > 0``; since
    ``relu6(x) / s = clamp(x / s, 0, 6 / s)``, the exact replacement is this module with
    ``upper = 6 / s``. ``upper`` is a buffer, so it travels with the state dict.
    """

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(upper, torch.Tensor) or upper.dim() != 1:
            raise ValueError(f"upper must be a 1-D tensor of per-channel bounds, got {upper!r}")
        self.register_buffer("upper", upper.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.upper.numel():
            raise ValueError(f"x must be [N, {self.upper.numel()}, ...], got shape {tuple(x.shape)}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.minimum(torch.relu(x), self.upper.to(x.dtype).reshape(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}"


def restore_channel_clamps(model: nn.Module, state: dict) -> list:
    """Turn each ``nn.ReLU6`` of ``model`` whose name has an ``upper`` buffer in ``state`` into a
    :class:`ChannelClamp` of that size, in place, so ``model.load_state_dict(state)`` restores a
    model saved after ``dfq(..., relu6='clamp')``. Returns the names replaced."""
    from ..quant.graph import replace_module

    names = []
    for key, value in state.items():
        name, _, leaf = key.rpartition(".")
        if leaf != "upper" or not name or not isinstance(value, torch.Tensor) or value.dim() != 1:
            continue
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        if type(m) is nn.ReLU6:
            replace_module(model, name, ChannelClamp(torch.full_like(value, 6.0, dtype=torch.float32)))
            names.append(name)
    return names
