"""Build the contenders of one model, check each against a fake-quant model, keep the reasons.

A :class:`Candidate` is built in two steps: ``make_artifact`` once per model (calibration, export:
independent of the thread count) and ``make_contender`` once per thread count (compiled kernels and
ONNX Runtime sessions fix their thread count when they are made). Anything that fails, and any
contender whose top-1 agreement with its reference model is below the floor, becomes a
:class:`PeerStatus` with a ``skipped`` reason: reported, never silently dropped, never timed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..runtime.latency import Contender
from .status import PeerUnavailable

__all__ = ["PEERS", "INT8_PEERS", "Candidate", "PeerStatus", "peer_candidates", "check_and_split",
           "logit_sqnr_db", "skipped_rows"]

FP32_COMPILE, TORCH_AO, PT2E, ORT = "fp32 torch.compile", "torch.ao int8", "torchao pt2e int8", "onnxruntime"
PEERS = (FP32_COMPILE, TORCH_AO, PT2E, ORT)
INT8_PEERS = (TORCH_AO, PT2E, ORT)  # "the fastest int8 peer" is the fastest of these
_UNSET = object()


class Candidate:
    """One contender to be: ``make_artifact() -> a`` (cached, once) then ``make_contender(a)``.

    ``reference`` names the model (a key of the ``references`` given to :func:`check_and_split`)
    whose top-1 predictions it must reproduce."""

    def __init__(self, name: str, precision: str, reference: str, make_artifact: Callable[[], object],
                 make_contender: Callable[[object], Contender]):
        self.name, self.precision, self.reference = name, precision, reference
        self._make_artifact, self._make_contender = make_artifact, make_contender
        self._artifact, self._error = _UNSET, None

    def contender(self) -> Contender:
        """The contender for the current thread count; raises PeerUnavailable with the reason."""
        if self._artifact is _UNSET and self._error is None:
            try:
                self._artifact = self._make_artifact()
            except PeerUnavailable as exc:
                self._error = str(exc)
            except Exception as exc:  # noqa: BLE001 - any build failure is reported as the skip reason
                self._error = f"build failed ({type(exc).__name__}: {exc})"
        if self._error is not None:
            raise PeerUnavailable(self._error)
        try:
            return self._make_contender(self._artifact)
        except PeerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PeerUnavailable(f"build failed ({type(exc).__name__}: {exc})") from exc


@dataclass
class PeerStatus:
    """The outcome of building and checking one candidate (for one thread count)."""

    name: str
    precision: str
    reference: str
    agreement: Optional[float] = None    # top-1 agreement with the reference, percent
    sqnr_db: Optional[float] = None      # logit signal-to-noise ratio against the reference, dB
    skipped: Optional[str] = None        # why it is not timed; None when it is
    contender: Optional[Contender] = None


def _channels_last_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(device="cpu", dtype=torch.float32).contiguous(memory_format=torch.channels_last)


def _fp32_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.to(device="cpu", dtype=torch.float32).contiguous()


def peer_candidates(fp_model: nn.Module, calib: Optional[Sequence[torch.Tensor]], input_shape: Sequence[int], *,
                    peers: Sequence[str] = PEERS, onnx_qmodel: Optional[nn.Module] = None,
                    reference: str = "fake-quant W8A8") -> List[Candidate]:
    """The CPU peers named in ``peers`` (a subset of :data:`PEERS`) of float ``fp_model``.

    ``calib``: float NCHW batches for the int8 peers' observers (None: those peers are skipped with
    that reason); ``onnx_qmodel``: the fake-quant model ONNX Runtime runs as QDQ (None: skipped);
    ``reference``: the key of the model the peers are checked against."""
    from ..runtime.latency import torch_ao_x86_int8
    from . import compiled, pt2e

    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"peers must be among {list(PEERS)}, got {unknown}")
    shape = tuple(input_shape)

    def need_calib():
        if not calib:
            raise PeerUnavailable("no calibration images (an --int-model file carries none)")
        return list(calib)

    def fp32_channels_last():
        return copy.deepcopy(fp_model).cpu().float().to(memory_format=torch.channels_last).eval()

    def torch_ao():
        try:
            return torch_ao_x86_int8(fp_model, need_calib())
        except RuntimeError as exc:  # no x86 quantized engine in this torch
            raise PeerUnavailable(str(exc)) from exc

    def run_ao(ao):
        import warnings

        def fn(x, ao=ao):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per call otherwise
                return ao(x)
        return Contender(TORCH_AO, "W8A8", fn, _fp32_nchw)

    def onnx_ready():
        if onnx_qmodel is None:
            raise PeerUnavailable("needs the fake-quant model to export (not available from an --int-model file)")
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise PeerUnavailable(f"onnxruntime / onnx not installed ({exc}); pip install 'zsq_engine[export]'") \
                from exc
        return onnx_qmodel

    def run_ort(qmodel):
        from ..export.ort import onnxruntime_contender

        return onnxruntime_contender(qmodel, shape, torch.get_num_threads())

    builders = {
        FP32_COMPILE: ("fp32", fp32_channels_last,
                       lambda m: Contender(FP32_COMPILE, "fp32", compiled.inductor(m), _channels_last_fp32)),
        TORCH_AO: ("W8A8", torch_ao, run_ao),
        PT2E: ("W8A8", lambda: pt2e.pt2e_x86_int8(fp_model, need_calib()),
               lambda m: Contender(PT2E, "W8A8", compiled.inductor(m), _fp32_nchw)),
        ORT: ("qdq", onnx_ready, run_ort),
    }
    return [Candidate(p, builders[p][0], reference, builders[p][1], builders[p][2]) for p in PEERS if p in peers]


def _logits(out) -> torch.Tensor:
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    return out.detach().float().cpu()


def logit_sqnr_db(got: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(|ref|^2 / |got - ref|^2) over all logits, each image's mean logit removed first
    (a constant shift changes no prediction). +inf when the two are equal."""
    ref = ref.double() - ref.double().mean(1, keepdim=True)
    got = got.double() - got.double().mean(1, keepdim=True)
    noise = float((got - ref).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-300) / noise))


def check_and_split(candidates: Sequence[Candidate], references: Dict[str, Callable[[torch.Tensor], torch.Tensor]],
                    images: torch.Tensor, *, batch: int = 1, min_agreement: float = 90.0,
                    min_sqnr_db: Optional[float] = None) -> Tuple[List[Contender], List[PeerStatus]]:
    """Build every candidate for the current thread count and check it before any timing.

    ``references``: ``{name: fn}`` giving the float logits of the models the candidates are checked
    against (fake-quant models, run eagerly); ``images``: float NCHW check images, fed to each
    contender in chunks of ``batch`` (the smallest timed batch size, so that a compiled contender
    compiles nothing the timing does not need). Top-1 agreement below ``min_agreement`` percent
    skips the contender, unless ``min_sqnr_db`` is given and its logits reach that SQNR against the
    reference: the gate for random-weight networks, whose near-tied top-1 predictions flip under
    any rounding difference while the logits still say whether it is the same network. Returns the contenders to time and one status per candidate, in order."""
    if not 0.0 <= float(min_agreement) <= 100.0:
        raise ValueError(f"min_agreement must be a percentage in [0, 100], got {min_agreement}")
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty float NCHW batch, got shape {tuple(images.shape)}")
    chunks = [images[i:i + batch] for i in range(0, images.shape[0], batch)]
    expected: Dict[str, torch.Tensor] = {}
    timed: List[Contender] = []
    statuses: List[PeerStatus] = []
    for cand in candidates:
        status = PeerStatus(cand.name, cand.precision, cand.reference)
        statuses.append(status)
        if cand.reference not in references:
            raise KeyError(f"candidate {cand.name!r} names reference {cand.reference!r}, "
                           f"not among {sorted(references)}")
        try:
            c = cand.contender()
        except PeerUnavailable as exc:
            status.skipped = str(exc)
            continue
        if cand.reference not in expected:
            with torch.no_grad():
                expected[cand.reference] = torch.cat([_logits(references[cand.reference](x)) for x in chunks])
        try:
            got = torch.cat([_logits(c.fn(c.prepare(x))) for x in chunks])
        except Exception as exc:  # noqa: BLE001 - e.g. Inductor without a C++ compiler
            status.skipped = f"failed on the check images ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
            continue
        ref = expected[cand.reference]
        if got.shape != ref.shape:
            status.skipped = f"output shape {tuple(got.shape)} differs from the reference's {tuple(ref.shape)}"
            continue
        status.agreement = float((got.argmax(1) == ref.argmax(1)).float().mean()) * 100
        status.sqnr_db = logit_sqnr_db(got, ref)
        by_sqnr = min_sqnr_db is not None and status.sqnr_db >= min_sqnr_db
        if status.agreement < min_agreement and not by_sqnr:
            sqnr_note = "" if min_sqnr_db is None else f" and its logit SQNR {status.sqnr_db:.1f} dB below {min_sqnr_db:g} dB"
            status.skipped = (f"top-1 agreement {status.agreement:.1f}% with {cand.reference} is below "
                              f"{min_agreement:g}%{sqnr_note}: not the same network, not timed")
            continue
        c.name = cand.name
        status.contender = c
        timed.append(c)
    return timed, statuses


def skipped_rows(statuses: Sequence[PeerStatus], batches: Sequence[int], extra: Optional[dict] = None) -> List[dict]:
    """One row per (skipped status, batch size), shaped like ``measure``'s rows with ``ms`` None."""
    return [{"impl": s.name, "precision": s.precision, "batch": b, "ms": None, "images_per_s": None,
             "cuda_graph": False, "speedup_vs_fp32": None, "speedup_vs_torch_ao": None, "skipped": s.skipped,
             "agreement_vs_fake_quant": s.agreement, "sqnr_db_vs_reference": s.sqnr_db,
             "agreement_reference": s.reference, **(extra or {})}
            for s in statuses if s.skipped for b in batches]
