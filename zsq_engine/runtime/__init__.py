"""Integer model runtime: convert a fake-quant model into real int8 / packed-int4 execution.

    from zsq_engine.runtime import convert, save, load
    int_model = convert(qmodel)          # qmodel from naive_ptq / reconstruction / QAT
    logits = int_model(images)           # float NCHW in, float logits out
    save(int_model, "int.pt"); int_model = load("int.pt")

Modules: :mod:`.graph` (trace into supported operations), :mod:`.convert` (fusion and lowering),
:mod:`.modules` (``IntConv2d`` / ``IntLinear``), :mod:`.cpu_launch` (their prepared C++ CPU
calls), :mod:`.model` (``IntModel``: the program and its execution, CUDA-graph capture),
:mod:`.plan` (the static CPU execution plan per input shape),
:mod:`.qparams` (grids and integer weights read from the fake-quant layers), :mod:`.quantize`,
:mod:`.io` (files), :mod:`.agreement` (integer vs fake-quant on labelled data), :mod:`.latency`
(FP32 / FP16 / BF16 / integer / torch.ao timing for ``zsq bench``). Details: ``docs/runtime.md``.
"""
from .convert import convert
from .graph import SUPPORTED, UnsupportedLayerError
from .io import FORMAT_VERSION, IncompatibleFormatError, load, save
from .model import IntModel
from .modules import IntConv2d, IntLinear
from .qparams import ActQParams

__all__ = ["convert", "save", "load", "IntModel", "IntConv2d", "IntLinear", "ActQParams", "UnsupportedLayerError",
           "IncompatibleFormatError", "FORMAT_VERSION", "SUPPORTED"]
