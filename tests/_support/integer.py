"""Integer-arithmetic oracles of the integer-kernel tests (C++ CPU and CUDA).

Exact products as int64 matmuls (GEMM) or fp64 F.conv2d on integer values (exact: every partial
sum is an integer far below 2^53); epilogues in fp64 from that exact product, compared within the
fp32 epilogue's error budget.
"""
import pytest
import torch
import torch.nn.functional as F

FP32_BUDGET = 8 * 2.0 ** -24  # relative error budget of the fp32 epilogue (zsq_engine.opspec.epilogue)


def rand_int(shape, lo, hi, dtype):
    return torch.randint(lo, hi + 1, shape).to(dtype)


def gemm_ref(a, w, za=0, zw=None):
    """sum_k (a - za)(w - zw) in int64."""
    wz = w.long() - (0 if zw is None else torch.as_tensor(zw).long().reshape(-1, 1))
    return (a.long() - za) @ wz.t()


def conv_ref(x, w, stride, padding, dilation, groups, pad_value, za=0, zw=None):
    """Exact NHWC conv of integer values in fp64 -> int64: [B, OH, OW, O]."""
    ph, pw = padding
    xd = F.pad(x.double().permute(0, 3, 1, 2), (pw, pw, ph, ph), value=float(pad_value)) - za
    wd = w.double().permute(0, 3, 1, 2)
    if zw is not None:
        wd = wd - torch.as_tensor(zw).double().reshape(-1, 1, 1, 1)
    out = F.conv2d(xd, wd, None, stride, 0, dilation, groups)
    return out.permute(0, 2, 3, 1).round().long()


def epilogue_expected(product, m, n, *, sa, sw, bias=None, residual=None, res_scale=None, res_zp=0,
                      act="none"):
    """fp64 steps 2-4 on the exact int64 product [M, N]; also the magnitude the budget scales with."""
    p = product.double().reshape(m, n)
    sa64 = torch.as_tensor(sa, dtype=torch.float32).double().reshape(-1, 1)
    sw64 = torch.as_tensor(sw, dtype=torch.float32).double().reshape(1, -1)
    v = p * sa64 * sw64
    mag = v.abs()
    if bias is not None:
        v = v + bias.double()
        mag = mag + bias.double().abs()
    if residual is not None:
        r = residual.reshape(m, n).double()
        if res_scale is not None:
            r = (r - res_zp) * torch.tensor(res_scale, dtype=torch.float32).double()
        v = v + r
        mag = mag + r.abs()
    if act == "relu":
        v = v.clamp_min(0)
    elif act == "relu6":
        v = v.clamp(0, 6)
    return v, mag


def check_float_out(out, ref, mag, dtype):
    assert out.dtype == dtype
    tol = FP32_BUDGET * mag + 1e-30
    if dtype != torch.float32:  # plus half an ulp of the output type (<= eps/2 relative)
        tol = tol + torch.finfo(dtype).eps / 2 * ref.abs() + torch.finfo(dtype).tiny
    err = (out.double() - ref).abs()
    assert (err <= tol).all(), f"max error {err.max().item()} over budget"


def check_requant(out, v, out_scale, zp, qmin, qmax, mag):
    """Equal to the fp64 requantisation except within the budget of a rounding tie (then +-1)."""
    t = v / torch.tensor(out_scale, dtype=torch.float32).double()
    want = (torch.round(t) + zp).clamp(qmin, qmax)
    diff = (out.double().reshape(want.shape) - want).abs()
    near_tie = ((t - t.floor() - 0.5).abs() <= 4 * FP32_BUDGET * (mag / out_scale + t.abs()) + 1e-12)
    assert (diff <= 1).all()
    assert (diff[~near_tie] == 0).all()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Runs a test with 1 and with 2 intra-op threads (the CPU kernels split work differently)."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def pack_panels(ext, w2d, groups=1, w_int4=False):
    """(panels, colsum) of an int8 weight [N, K] holding int8 or int4 values, packed by ``ext``."""
    from zsq_engine import ops
    src = ops.pack_int4(w2d) if w_int4 else w2d
    return ext.int_pack_weight_cpu(src, groups, w_int4, w2d.shape[1])


def int32_epilogue(ext, za=0, zw=None):
    """The bound epilogue of an int32 output with zero points only."""
    return ext.IntEpilogue(out_dtype=torch.int32, act_zero_point=za, weight_zero_point=zw)
