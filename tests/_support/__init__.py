"""Helpers shared by the test modules (importable as ``_support``: pytest puts tests/ on sys.path).

* ``devices``: the devices the op tests run on.
* ``numerics``: quantization ranges, random qparams, strided views.
* ``integer``: exact integer GEMM / conv oracles and the epilogue error budget.
* ``runtime``: healthy random models and the fake-quant oracle of the integer runtime.
* ``data``: the Fashion-MNIST skip mark and small ImageNet-style image folders.
* ``user_modules``: a user's model module written into tmp_path (and the ``user_module`` fixture).
* ``compat_refs``: re-implementations of the research quantizers for the compat tests.
"""
