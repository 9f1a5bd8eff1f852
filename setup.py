"""Build script for zsq_engine: packages plus the optional native extension ``zsq_engine._C``.

Metadata lives in pyproject.toml. This file exists because the package list (the top-level
``kernels/`` folder ships as ``zsq_engine.kernels``) and the extension need code.

Install with ``pip install -e . --no-build-isolation`` so the extension is built against the
torch that is already installed. Controls (environment variables):

  ZSQ_SKIP_EXT=1          do not build the extension (pure-Python install)
  TORCH_CUDA_ARCH_LIST    CUDA architectures, default "8.0;9.0a"
  MAX_JOBS                parallel compile jobs for ninja, default: number of CPU cores
  CUDA_HOME               CUDA toolkit used for csrc/cuda/*.cu (found automatically by torch)

The extension is optional: if torch is missing at build time, or compiling fails, the install
still succeeds without it and ``zsq_engine`` falls back to its pure-PyTorch reference ops
(``zsq_engine._ext.extension_status()`` says what happened). A failed CUDA part is retried as a
CPU-only extension. Editable installs keep their objects in ``build/temp.editable-*`` so that a
reinstall recompiles only the sources that changed.
"""

from __future__ import annotations

import glob
import os
import sys
import traceback

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "zsq_engine._C"
DEFAULT_CUDA_ARCHS = "8.0;9.0a"


def _warn(message: str) -> None:
    # pip hides a successful build's output unless run with -v, so the runtime status
    # (zsq_engine._ext.extension_status) repeats the essentials; this is for build logs.
    bar = "=" * 78
    sys.stderr.write(f"\n{bar}\nzsq_engine WARNING: {message}\n{bar}\n\n")
    sys.stderr.flush()


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().replace("\n", " ")


def _report_failure(name: str, exc: BaseException) -> None:
    _warn(
        f"building the native extension {name} FAILED; installing without it "
        "(zsq_engine uses its pure-PyTorch reference ops instead).\n"
        f"Cause: {_one_line(exc)}\n"
        "The compiler output is above; rerun `pip install -v -e . --no-build-isolation` "
        "to see it in full."
    )


def _packages() -> tuple[list[str], dict[str, str]]:
    """Python packages and their source folders; ``kernels/`` ships as ``zsq_engine.kernels``."""
    packages = find_packages(where=ROOT, include=["zsq_engine", "zsq_engine.*"])
    package_dir = {"zsq_engine.kernels": "kernels"}
    packages.append("zsq_engine.kernels")
    for sub in find_packages(where=os.path.join(ROOT, "kernels")):
        packages.append(f"zsq_engine.kernels.{sub}")
    return sorted(set(packages)), package_dir


def _relative_sources(pattern: str) -> list[str]:
    # setuptools wants sources relative to the project root.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension_modules() -> tuple[list, dict]:
    """The extension list and cmdclass; empty when the extension cannot or should not build."""
    if os.environ.get("ZSQ_SKIP_EXT", "0") == "1":
        _warn("ZSQ_SKIP_EXT=1: skipping the native extension zsq_engine._C (pure-Python install).")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # noqa: BLE001 - any import failure means "no torch to build against"
        _warn(
            "torch is not importable at build time, so the native extension zsq_engine._C is "
            f"not built ({type(exc).__name__}: {exc}). Install torch first and reinstall with "
            "`pip install -e . --no-build-isolation`."
        )
        return [], {}

    # csrc/bind/*.cpp are #included by binding.cpp (one translation unit: torch's headers parsed once)
    cpu_sources = ["csrc/binding.cpp"] + _relative_sources("csrc/cpu/*.cpp")
    cuda_sources = _relative_sources("csrc/cuda/*.cu")
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and bool(cuda_sources)
    if torch.version.cuda and cpp_extension.CUDA_HOME is None:
        _warn(
            f"torch {torch.__version__} is a CUDA build but no CUDA toolkit was found "
            "(set CUDA_HOME or put nvcc on PATH): building the CPU part of zsq_engine._C only."
        )

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    include_dirs = [os.path.join(ROOT, "csrc")]

    def make_extension(cuda: bool):
        common = dict(
            name=EXT_NAME,
            include_dirs=include_dirs,
            extra_link_args=["-fopenmp"],
            # binding.cpp #includes these: a changed binding source rebuilds it
            depends=_relative_sources("csrc/bind/*"),
        )
        if cuda:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
            ext = cpp_extension.CUDAExtension(
                sources=cpu_sources + cuda_sources,
                define_macros=[("ZSQ_WITH_CUDA", None)],
                extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3", "-lineinfo"]},
                **common,
            )
        else:
            ext = cpp_extension.CppExtension(
                sources=cpu_sources, extra_compile_args={"cxx": ["-O3", "-fopenmp"]}, **common
            )
        ext.zsq_with_cuda = cuda
        # optional=True: setuptools tolerates a missing build output (e.g. when copying the
        # editable-install .so back into the source tree) instead of failing the install.
        ext.optional = True
        return ext

    def _strip_to_cpu(ext, cpu_ext) -> None:
        # Mutate in place: setuptools keeps private bookkeeping on the original object.
        for attr in (
            "sources", "include_dirs", "define_macros", "undef_macros", "library_dirs",
            "libraries", "runtime_library_dirs", "extra_compile_args", "extra_link_args",
        ):  # fmt: skip
            setattr(ext, attr, getattr(cpu_ext, attr))
        ext.zsq_with_cuda = False

    class _CudaPartFailed(Exception):
        """Raised out of build_extension so that build_extensions retries without CUDA."""

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """torch's BuildExtension where a failure degrades instead of failing the install.

        A failed CUDA build (compile error, or torch refusing the toolkit, e.g. a CUDA major
        version mismatch) is retried as a CPU-only extension; a failed CPU build installs the
        package without the extension.
        """

        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                # pip gives every editable build a fresh temp dir, so ninja would recompile
                # everything each time; a fixed folder keeps the objects and the ninja log
                # between installs and only changed sources are rebuilt.
                tag = sys.implementation.cache_tag
                self.build_temp = os.path.join(ROOT, "build", f"temp.editable-{tag}")

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:  # noqa: BLE001 - ninja/compiler/torch checks raise many types
                cause = exc.__cause__ if isinstance(exc, _CudaPartFailed) else exc
                if not any(getattr(e, "zsq_with_cuda", False) for e in self.extensions):
                    _report_failure(EXT_NAME, cause)
                    return
                _warn(
                    f"building the CUDA part of {EXT_NAME} FAILED ({_one_line(cause)}); "
                    "retrying with the CPU kernels only. Rerun `pip install -v -e . "
                    "--no-build-isolation` for the full compiler output."
                )
                for ext in self.extensions:
                    if getattr(ext, "zsq_with_cuda", False):
                        _strip_to_cpu(ext, make_extension(cuda=False))
                try:
                    super().build_extensions()
                except Exception as exc2:  # noqa: BLE001
                    _report_failure(EXT_NAME, exc2.__cause__ or exc2)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                if getattr(ext, "zsq_with_cuda", False):
                    raise _CudaPartFailed() from exc
                _report_failure(ext.name, exc)

    try:
        extension = make_extension(cuda=with_cuda)
    except Exception as exc:  # noqa: BLE001 - torch probes the toolkit layout here
        if not with_cuda:
            raise
        _warn(f"cannot configure the CUDA part of {EXT_NAME} ({_one_line(exc)}); CPU part only.")
        extension = make_extension(cuda=False)
    cmdclass = {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}
    return [extension], cmdclass


def main() -> None:
    packages, package_dir = _packages()
    ext_modules, cmdclass = _extension_modules()
    if not cmdclass:
        cmdclass = {"build_ext": _setuptools_build_ext}
    setup(
        packages=packages,
        package_dir=package_dir,
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )


main()
