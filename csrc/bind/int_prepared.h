// Prepared CPU integer conv / GEMM calls (csrc/bind/int_prepared.cpp): weight panels and the epilogue bound
// once in a Python object, each call passes only the activation (and the residual / output
// buffers). Registered into the extension module by binding.cpp.
#pragma once

#include <pybind11/pybind11.h>

void bind_int_prepared(pybind11::module_& m);
