"""Why a peer could not be built: raised by the builders, turned into a skipped row by the caller."""
from __future__ import annotations

__all__ = ["PeerUnavailable"]


class PeerUnavailable(RuntimeError):
    """A peer engine is not installed or cannot build this model; ``str(exc)`` is the reason."""
