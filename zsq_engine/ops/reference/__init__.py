"""Pure-PyTorch reference implementations: the oracle for every kernel and the universal fallback."""
