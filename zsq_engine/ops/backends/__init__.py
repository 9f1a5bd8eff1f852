"""Optional backends. Each module registers its kernels with :mod:`..dispatch` when imported;
the dispatcher imports them lazily and treats an import failure as "backend unavailable"."""
