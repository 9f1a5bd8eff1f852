"""Ratios of a benchmark run: against FP32 channels_last and against the fastest int8 peer."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .peer_set import INT8_PEERS

__all__ = ["add_peer_ratios", "GROUP_KEYS"]

GROUP_KEYS = ("model", "batch", "threads", "cuda_graph")  # rows compared with each other share these


def add_peer_ratios(rows: Sequence[dict]) -> List[dict]:
    """Set, on every timed row, ``speedup_vs_fp32`` (``fp32`` = the channels_last float model),
    ``speedup_vs_fastest_int8_peer`` and ``fastest_int8_peer`` (the fastest of :data:`INT8_PEERS`
    timed in the same group: same model, batch, threads); None where the baseline is missing.
    Ratios are baseline time / row time (> 1: the row is faster). Returns ``rows``."""
    groups: Dict[Tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in GROUP_KEYS), []).append(r)
    for same in groups.values():
        timed = [r for r in same if r.get("ms")]
        fp32 = [r["ms"] for r in timed if r["impl"] == "fp32"]
        peers = sorted((r["ms"], r["impl"]) for r in timed if r["impl"] in INT8_PEERS)
        for r in same:
            ok = bool(r.get("ms"))
            r["speedup_vs_fp32"] = fp32[0] / r["ms"] if ok and fp32 else None
            r["speedup_vs_fastest_int8_peer"] = peers[0][0] / r["ms"] if ok and peers else None
            r["fastest_int8_peer"] = peers[0][1] if peers else None
    return list(rows)
