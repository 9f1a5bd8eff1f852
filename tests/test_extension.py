"""The native extension ``zsq_engine._C``: INT4 pack/unpack on the CPU and introspection.

The oracle is written here with numpy bit manipulation, independent of every kernel: element 2i
of a row goes to the low nibble of byte i, element 2i+1 to the high nibble, signed values as
two's-complement nibbles, an odd row length padded with a zero nibble.
"""
import numpy as np
import pytest
import torch

from zsq_engine._ext import extension_status, get_extension

_C = get_extension()
if _C is None:
    pytest.skip(
        f"native extension zsq_engine._C not built: {extension_status()['error']} "
        "(build with `pip install -e . --no-build-isolation`)",
        allow_module_level=True,
    )

ODD_AND_EVEN_K = [1, 2, 7, 8, 123, 1025]
LEADING_SHAPES = [(), (3,), (2, 5)]
# (torch dtype, is_signed, qmin, qmax)
INT4_KINDS = [
    pytest.param(torch.int8, True, -8, 7, id="signed"),
    pytest.param(torch.uint8, False, 0, 15, id="unsigned"),
]


def oracle_pack(values: np.ndarray) -> np.ndarray:
    """values: integer array [..., K] already in int4 range -> uint8 [..., (K + 1) // 2]."""
    k = values.shape[-1]
    nibbles = (values.astype(np.int64) & 0xF).astype(np.uint8)  # two's complement low 4 bits
    if k % 2:
        pad = np.zeros(values.shape[:-1] + (1,), dtype=np.uint8)
        nibbles = np.concatenate([nibbles, pad], axis=-1)
    low, high = nibbles[..., 0::2], nibbles[..., 1::2]
    return (low | (high << 4)).astype(np.uint8)


def oracle_unpack(packed: np.ndarray, k: int, is_signed: bool) -> np.ndarray:
    low = (packed & 0x0F).astype(np.int64)
    high = (packed >> 4).astype(np.int64)
    values = np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
    values = values[..., :k]
    if is_signed:
        values = np.where(values >= 8, values - 16, values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


def random_int4(shape, dtype, qmin, qmax, generator=None):
    x = torch.randint(qmin, qmax + 1, shape, dtype=torch.int64, generator=generator)
    if x.numel() >= 2:  # always include both ends of the range
        flat = x.view(-1)
        flat[0], flat[-1] = qmin, qmax
    return x.to(dtype)


# --------------------------------------------------------------------------------------------
# Exact layout


def test_known_bytes():
    x = torch.tensor([1, 2, -1, -8, 7, 0, -3], dtype=torch.int8)
    packed = _C.pack_int4_cpu(x)
    # [1,2] -> 0x21, [-1,-8] -> 0x8F, [7,0] -> 0x07, [-3, pad] -> 0x0D
    assert packed.tolist() == [0x21, 0x8F, 0x07, 0x0D]
    u = torch.tensor([15, 0, 3, 12, 9], dtype=torch.uint8)
    assert _C.pack_int4_cpu(u).tolist() == [0x0F, 0xC3, 0x09]


@pytest.mark.parametrize("dtype, is_signed, qmin, qmax", INT4_KINDS)
@pytest.mark.parametrize("lead", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("k", ODD_AND_EVEN_K)
def test_pack_matches_oracle(dtype, is_signed, qmin, qmax, lead, k):
    x = random_int4(lead + (k,), dtype, qmin, qmax)
    packed = _C.pack_int4_cpu(x)
    assert packed.dtype == torch.uint8
    assert packed.shape == lead + ((k + 1) // 2,)
    np.testing.assert_array_equal(packed.numpy(), oracle_pack(x.numpy()))
    if k % 2:  # the padding nibble is zero
        assert (packed[..., -1] >> 4).eq(0).all()


@pytest.mark.parametrize("dtype, is_signed, qmin, qmax", INT4_KINDS)
@pytest.mark.parametrize("lead", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("k", ODD_AND_EVEN_K)
def test_unpack_matches_oracle(dtype, is_signed, qmin, qmax, lead, k):
    # Every byte value, including a non-zero padding nibble, which unpack must ignore.
    packed = torch.randint(0, 256, lead + ((k + 1) // 2,), dtype=torch.uint8)
    out = _C.unpack_int4_cpu(packed, k, is_signed)
    assert out.dtype == dtype
    assert out.shape == lead + (k,)
    np.testing.assert_array_equal(out.numpy(), oracle_unpack(packed.numpy(), k, is_signed))


@pytest.mark.parametrize("dtype, is_signed, qmin, qmax", INT4_KINDS)
@pytest.mark.parametrize(
    "shape",
    [(4, 6, 1), (5, 7), (3, 2, 2, 9), (17, 64), (1, 4096), (80, 8193), (300, 2048), (2, 1 << 20)],
    ids=str,
)
def test_round_trip(dtype, is_signed, qmin, qmax, shape):
    # The large shapes cross the OpenMP threshold (odd k: per-row path, even k: flat path).
    x = random_int4(shape, dtype, qmin, qmax)
    packed = _C.pack_int4_cpu(x)
    np.testing.assert_array_equal(packed.numpy(), oracle_pack(x.numpy()))
    assert torch.equal(_C.unpack_int4_cpu(packed, shape[-1], is_signed), x)


@pytest.mark.parametrize("dtype, is_signed, qmin, qmax", INT4_KINDS)
def test_random_shapes(dtype, is_signed, qmin, qmax):
    gen = torch.Generator().manual_seed(1234)
    for _ in range(25):
        ndim = int(torch.randint(1, 5, (1,), generator=gen))
        shape = tuple(int(s) for s in torch.randint(1, 9, (ndim,), generator=gen))
        shape = shape[:-1] + (int(torch.randint(1, 300, (1,), generator=gen)),)
        x = random_int4(shape, dtype, qmin, qmax, generator=gen)
        packed = _C.pack_int4_cpu(x)
        np.testing.assert_array_equal(packed.numpy(), oracle_pack(x.numpy()))
        assert torch.equal(_C.unpack_int4_cpu(packed, shape[-1], is_signed), x)


@pytest.mark.parametrize("dtype, is_signed, qmin, qmax", INT4_KINDS)
def test_non_contiguous_input(dtype, is_signed, qmin, qmax):
    base = random_int4((9, 31), dtype, qmin, qmax)
    for view in (base.t(), base[:, ::2], base[::3]):
        assert not view.is_contiguous() or view.shape[0] == 3
        packed = _C.pack_int4_cpu(view)
        np.testing.assert_array_equal(packed.numpy(), oracle_pack(view.contiguous().numpy()))
        strided_packed = torch.empty(packed.shape[0], 2 * packed.shape[1], dtype=torch.uint8)
        strided_packed[:, ::2] = packed
        out = _C.unpack_int4_cpu(strided_packed[:, ::2], view.shape[-1], is_signed)
        assert torch.equal(out, view)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_empty(shape):
    x = torch.empty(shape, dtype=torch.int8)
    packed = _C.pack_int4_cpu(x)
    assert packed.shape == shape[:-1] + ((shape[-1] + 1) // 2,)
    out = _C.unpack_int4_cpu(packed, shape[-1], True)
    assert out.shape == shape and out.dtype == torch.int8


def test_thread_count_does_not_change_results():
    x = random_int4((257, 4099), torch.int8, -8, 7)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _C.pack_int4_cpu(x)
        torch.set_num_threads(max(2, before))
        multi = _C.pack_int4_cpu(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(single, multi)


# --------------------------------------------------------------------------------------------
# Clear errors


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([0, 8], torch.int8, r"signed int4 range \[-8, 7\].*max 8"),
        ([-9, 3, 1], torch.int8, r"signed int4 range \[-8, 7\].*min -9"),
        ([127, -128], torch.int8, r"\[-8, 7\]"),
        ([0, 16], torch.uint8, r"unsigned int4 range \[0, 15\].*max 16"),
        ([255], torch.uint8, r"\[0, 15\]"),
    ],
)
def test_out_of_range_values_raise(values, dtype, expected):
    with pytest.raises(RuntimeError, match=r"pack_int4_cpu: x holds values outside the .*" + expected):
        _C.pack_int4_cpu(torch.tensor(values, dtype=dtype))


def test_out_of_range_in_large_parallel_input_raises():
    x = torch.zeros(300, 4096, dtype=torch.int8)
    x[211, 4095] = 8  # far from the first chunk: the OR-reduction must cover every thread
    with pytest.raises(RuntimeError, match=r"x holds values outside"):
        _C.pack_int4_cpu(x)
    y = torch.zeros(301, 4095, dtype=torch.uint8)
    y[300, 4094] = 16  # last element of an odd-k row (the padded byte)
    with pytest.raises(RuntimeError, match=r"x holds values outside"):
        _C.pack_int4_cpu(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int16, torch.bool])
def test_pack_wrong_dtype_raises(dtype):
    with pytest.raises(RuntimeError, match=r"pack_int4_cpu: x must be int8 .* or uint8 .*got dtype"):
        _C.pack_int4_cpu(torch.zeros(4, dtype=dtype))


def test_pack_zero_dim_raises():
    with pytest.raises(RuntimeError, match=r"x must have at least 1 dimension"):
        _C.pack_int4_cpu(torch.tensor(3, dtype=torch.int8))


@pytest.mark.parametrize("k", [5, 6, 9, 100, 0, -1])
def test_unpack_wrong_k_raises(k):
    packed = torch.zeros(3, 4, dtype=torch.uint8)  # fits k = 7 or 8 only
    with pytest.raises(RuntimeError, match=r"unpack_int4_cpu: k=-?\d+ does not fit packed.*k in \{7, 8\}"):
        _C.unpack_int4_cpu(packed, k, True)


def test_unpack_accepts_both_fitting_k():
    packed = torch.zeros(3, 4, dtype=torch.uint8)
    assert _C.unpack_int4_cpu(packed, 7, True).shape == (3, 7)
    assert _C.unpack_int4_cpu(packed, 8, False).shape == (3, 8)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float32])
def test_unpack_wrong_dtype_raises(dtype):
    with pytest.raises(RuntimeError, match=r"unpack_int4_cpu: packed must be uint8"):
        _C.unpack_int4_cpu(torch.zeros(3, 4, dtype=dtype), 8, True)


def test_unpack_zero_dim_raises():
    with pytest.raises(RuntimeError, match=r"packed must have at least 1 dimension"):
        _C.unpack_int4_cpu(torch.tensor(3, dtype=torch.uint8), 1, True)


def test_argument_names_are_keywords():
    x = torch.tensor([[1, -2, 3]], dtype=torch.int8)
    packed = _C.pack_int4_cpu(x=x)
    assert torch.equal(_C.unpack_int4_cpu(packed=packed, k=3, is_signed=True), x)


# --------------------------------------------------------------------------------------------
# Introspection


def test_cpu_capabilities_keys():
    caps = _C.cpu_capabilities()
    for key in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "openmp"):
        assert isinstance(caps[key], bool), key
    assert isinstance(caps["max_threads"], int) and caps["max_threads"] >= 1
    # AVX-512 implies AVX2 on every shipping CPU; BW/VNNI extend F.
    if caps["avx512f"]:
        assert caps["avx2"]
    if caps["avx512bw"] or caps["avx512_vnni"]:
        assert caps["avx512f"]


def test_build_info_and_status_agree():
    info = _C.build_info()
    assert isinstance(info["with_cuda"], bool)
    assert isinstance(info["torch_version_built"], str) and info["torch_version_built"]
    assert isinstance(info["compiler"], str) and info["compiler"]
    # Built against the torch that loads it (major.minor must match for the ABI).
    built = info["torch_version_built"].split(".")[:2]
    assert built == torch.__version__.split("+")[0].split(".")[:2]
    status = extension_status()
    assert status == {"built": True, "cpu": True, "cuda": info["with_cuda"], "error": None}
    assert hasattr(_C, "pack_int4_cuda") == info["with_cuda"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    if not hasattr(_C, "pack_int4_cuda"):
        pytest.skip("extension built without CUDA kernels")
    for dtype, is_signed, qmin, qmax in ((torch.int8, True, -8, 7), (torch.uint8, False, 0, 15)):
        for shape in ((1,), (3, 7), (2, 5, 123), (64, 1025), (513, 4096)):
            x = random_int4(shape, dtype, qmin, qmax)
            packed = _C.pack_int4_cuda(x.cuda())
            assert torch.equal(packed.cpu(), _C.pack_int4_cpu(x))
            assert torch.equal(_C.unpack_int4_cuda(packed, shape[-1], is_signed).cpu(), x)
        bad = torch.full((4, 9), qmax + 1, dtype=dtype, device="cuda")
        with pytest.raises(RuntimeError, match=r"pack_int4_cuda: x holds values outside"):
            _C.pack_int4_cuda(bad)
