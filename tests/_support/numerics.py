"""Quantization ranges, random quantization parameters and strided views for the op tests."""
import torch


def quant_range(bits: int, signed: bool):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def random_qparams(channels: int, qmin: int, qmax: int, device, generator=None):
    scale = (torch.rand(channels, generator=generator) * 0.2 + 0.01).to(device)
    zero_point = torch.randint(qmin, qmax + 1, (channels,), generator=generator).to(torch.int32).to(device)
    return scale, zero_point


def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Same values, same shape, a strided view (every other element of a twice-as-wide buffer)."""
    wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.is_contiguous() or x.shape[-1] == 1
    return view
