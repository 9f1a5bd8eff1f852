"""Integer reference ops against independent integer arithmetic (int64, explicit loops)."""
import pytest
import torch
import torch.nn.functional as F

from zsq_engine import ops


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 13, 5), (33, 127, 65), (17, 1025, 3)])
def test_int_mm_exact(m, k, n, device):
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    a[0, 0], b[0, 0] = -128, -128  # the extreme product
    out = ops.int_mm(a.to(device), b.to(device))
    expected = (a.long() @ b.long()).to(torch.int32)
    assert out.dtype == torch.int32 and torch.equal(out.cpu(), expected)


def test_int_mm_bad_arguments():
    a = torch.zeros(3, 4, dtype=torch.int8)
    with pytest.raises(TypeError, match="a must have dtype"):
        ops.int_mm(a.float(), a.t())
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.int_mm(a, a)
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.int_mm(a[0], a.t())


def _pack_python(values):
    row = list(values) + ([0] if len(values) % 2 else [])
    return [(row[i] & 0xF) | ((row[i + 1] & 0xF) << 4) for i in range(0, len(row), 2)]


@pytest.mark.parametrize("k", [1, 2, 7, 123, 1024])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_unpack_int4(k, signed, device):
    lo, hi = (-8, 7) if signed else (0, 15)
    dtype = torch.int8 if signed else torch.uint8
    x = torch.randint(lo, hi + 1, (3, k), dtype=torch.int16).to(dtype)
    x[0, 0], x[-1, -1] = lo, hi
    packed = ops.pack_int4(x.to(device))
    assert packed.dtype == torch.uint8 and packed.shape == (3, (k + 1) // 2)
    for r in range(3):
        assert packed[r].cpu().tolist() == _pack_python(x[r].tolist())
    assert torch.equal(ops.unpack_int4(packed, k, signed=signed).cpu(), x)


def test_pack_int4_errors():
    with pytest.raises(ValueError, match=r"needs \[-8, 7\]"):
        ops.pack_int4(torch.tensor([8], dtype=torch.int8))
    with pytest.raises(ValueError, match=r"needs \[0, 15\]"):
        ops.pack_int4(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.pack_int4(torch.tensor([1], dtype=torch.int32))
    with pytest.raises(ValueError, match="does not match packed.shape"):
        ops.unpack_int4(torch.zeros(4, dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="packed must have dtype"):
        ops.unpack_int4(torch.zeros(4, dtype=torch.int8), 8)


def _conv_int64(x, w, stride, padding, dilation, groups):
    """Direct integer convolution, NCHW, int64, as explicit shifted-window sums."""
    x = F.pad(x.long(), (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = torch.zeros(n, o, oh, ow, dtype=torch.int64)
    og = o // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og].long()
        for i in range(kh):
            for j in range(kw):
                win = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (oh - 1) + 1: stride[0],
                         j * dilation[1]: j * dilation[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, g * og:(g + 1) * og] += torch.einsum("nchw,oc->nohw", win, ws[:, :, i, j])
    return out.to(torch.int32)


CONVS = [  # (N, C, H, W, O, k, stride, padding, dilation, groups)
    (1, 3, 7, 7, 5, 1, 1, 0, 1, 1),
    (2, 4, 9, 8, 6, 3, 1, 1, 1, 1),
    (1, 6, 11, 11, 4, 5, 2, 2, 1, 2),
    (2, 8, 10, 10, 8, 3, 2, 1, 1, 8),   # depthwise
    (1, 3, 15, 15, 7, 7, 2, 3, 1, 1),
    (1, 4, 9, 9, 4, 3, 1, 2, 2, 1),     # dilation 2
]


@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8])
def test_conv2d_int_exact(cfg, layout, xdtype, device):
    n, c, h, w, o, k, s, p, d, g = cfg
    lo, hi = (-128, 127) if xdtype == torch.int8 else (0, 255)
    x = torch.randint(lo, hi + 1, (n, c, h, w), dtype=torch.int16).to(xdtype)
    wt = torch.randint(-128, 128, (o, c // g, k, k), dtype=torch.int8)
    expected = _conv_int64(x, wt, (s, s), (p, p), (d, d), g)
    xin = x if layout == "NCHW" else x.permute(0, 2, 3, 1).contiguous()
    out = ops.conv2d_int(xin.to(device), wt.to(device), s, p, d, g, layout=layout).cpu()
    if layout == "NHWC":
        out = out.permute(0, 3, 1, 2)
    assert out.dtype == torch.int32 and torch.equal(out, expected)


def test_conv2d_int_bad_arguments():
    x = torch.zeros(1, 4, 5, 5, dtype=torch.int8)
    w = torch.zeros(2, 4, 3, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="does not fit 4 input channels"):
        ops.conv2d_int(x, w, groups=2)
    with pytest.raises(ValueError, match="layout must be"):
        ops.conv2d_int(x, w, layout="CHWN")
    with pytest.raises(ValueError, match="stride must be"):
        ops.conv2d_int(x, w, stride=0)
    with pytest.raises(TypeError, match="weight must have dtype"):
        ops.conv2d_int(x, w.float())
