"""Reference helpers shared by several op families: the counter-based random numbers (``rng``) of
the QDrop ops. Each family's own reference lives in ``ops/<family>/reference.py``."""
