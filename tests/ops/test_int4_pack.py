"""The int4 packing family as torch.library ops, on every backend (reference / cpu / triton forced,
which has no kernel of its own here / cuda when a GPU is visible): opcheck of both ops, the packed
bytes against nibbles written out by hand, and torch.compile without graph breaks."""
import pytest
import torch

from zsq_engine import ops
from zsq_engine.ops.int4_pack import library as L

from ._backend import BACKENDS, backend_fixture

# triton has no int4 packing kernel (forced strictly it is an error), so it is not a parameter here
backend = pytest.fixture(params=[b for b in BACKENDS if b != "triton"])(backend_fixture)


def _values(device, k=5, signed=True):
    gen = torch.Generator().manual_seed(3)
    lo, hi = (-8, 7) if signed else (0, 15)
    return torch.randint(lo, hi + 1, (3, k), generator=gen).to(torch.int8 if signed else torch.uint8).to(device)


def test_every_op_has_a_case():
    assert {op.name() for op in L.PRIMITIVES} == {"zsq::pack_int4", "zsq::unpack_int4"}


@pytest.mark.parametrize("signed", [True, False])
def test_opcheck(backend, signed):
    _, device = backend
    x = _values(device, signed=signed)
    torch.library.opcheck(L.PACK_INT4, (x,))
    torch.library.opcheck(L.UNPACK_INT4, (ops.pack_int4(x), 5, signed))


@pytest.mark.parametrize("signed", [True, False])
def test_packed_bytes_are_the_nibbles(backend, signed):
    """Element 2i in the low nibble, 2i + 1 in the high one, two's complement, odd k padded with 0."""
    _, device = backend
    x = _values(device, k=5, signed=signed)
    packed = ops.pack_int4(x)
    rows = []
    for row in x.cpu().tolist():
        nib = [v & 0xF for v in row] + [0]
        rows.append([nib[2 * i] | (nib[2 * i + 1] << 4) for i in range(3)])
    assert packed.dtype == torch.uint8 and packed.cpu().tolist() == rows
    assert torch.equal(ops.unpack_int4(packed, 5, signed=signed), x)


def test_compile_fullgraph_matches_eager(backend):
    _, device = backend
    x = _values(device, k=6)
    torch._dynamo.reset()
    f = lambda t: ops.unpack_int4(ops.pack_int4(t), 6) + 1  # noqa: E731
    assert torch.equal(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))
