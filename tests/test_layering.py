"""Layering: the kernels sit below the op layer and the leaf ``zsq_engine.opspec`` sits below
both (docs/architecture.md, "Ops and kernels"); the integer runtime depends on no pipeline; no
module reaches into another package's private names.

Checked on the source with ``ast``, so that imports inside functions (lazy ones) count too.
"""
import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path):
    """(line, absolute module name or None, level, relative module) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0, None
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module if node.level == 0 else None, node.level, node.module


def _kernel_files():
    files = sorted((REPO / "kernels").glob("*.py"))
    assert len(files) > 5, "kernels/ should hold the Triton kernel modules"
    return files


def test_parser_sees_lazy_imports(tmp_path):
    # the check below would be empty if imports inside functions were missed
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from zsq_engine.ops.epilogue import Epilogue\n    import zsq_engine.ops\n")
    assert [m for _, m, _, _ in _imports(src)] == ["zsq_engine.ops.epilogue", "zsq_engine.ops"]


@pytest.mark.parametrize("path", _kernel_files(), ids=lambda p: p.name)
def test_kernels_import_nothing_from_the_op_layer(path):
    bad = []
    for line, module, level, rel in _imports(path):
        if module is not None and (module == "zsq_engine.ops" or module.startswith("zsq_engine.ops.")):
            bad.append(f"line {line}: {module}")
        if level >= 2:  # kernels/ ships as zsq_engine.kernels: '..' reaches the package root
            bad.append(f"line {line}: {'.' * level}{rel or ''} (relative import out of kernels/)")
    assert not bad, f"{path.name} imports from the op layer: {bad}"


def test_opspec_imports_only_torch():
    files = sorted((REPO / "zsq_engine" / "opspec").glob("*.py"))
    assert files
    for path in files:
        for line, module, level, rel in _imports(path):
            if level == 1:
                continue  # its own modules
            assert level == 0, f"{path.name}:{line} relative import {'.' * level}{rel} leaves opspec"
            top = module.split(".")[0]
            assert top == "torch" or top in STDLIB, f"{path.name}:{line} imports {module}; opspec may import only torch"


def _package_files():
    files = sorted((REPO / "zsq_engine").rglob("*.py"))
    assert len(files) > 50, "zsq_engine/ should hold the package modules"
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _absolute_imports(path: Path):
    """(line, absolute module, imported names) of every import in ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target, [a.name for a in node.names]


def test_absolute_imports_resolve_relative_ones(tmp_path):
    # the two checks below rely on '..recon' inside zsq_engine/runtime/ becoming zsq_engine.recon
    path = REPO / "zsq_engine" / "runtime" / "model.py"
    assert _module_name(path) == "zsq_engine.runtime.model"
    names = {m for _, m, _ in _absolute_imports(path)}
    assert any(m.startswith("zsq_engine.runtime.") for m in names if m), names


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", [p for p in _package_files() if "runtime" in p.parts], ids=lambda p: p.name)
def test_runtime_imports_nothing_from_recon_or_qat(path):
    """The integer runtime runs models that any pipeline produced; it must not depend on one."""
    bad = [f"line {line}: {m}" for line, m, _ in _absolute_imports(path)
           if m and _subpackage(m) in ("zsq_engine.recon", "zsq_engine.qat")]
    assert not bad, f"{path.relative_to(REPO)} imports a pipeline: {bad}"


def test_no_module_imports_a_private_name_of_another_package():
    """A leading underscore is private to its subpackage (zsq_engine.synth, zsq_engine.ops, ...).
    Private modules of the root package itself (zsq_engine._ext, the extension loader) belong to
    the package every subpackage is part of, and stay importable from all of them."""
    bad = []
    for path in _package_files():
        own = _subpackage(_module_name(path))
        for line, module, names in _absolute_imports(path):
            if not module or not module.startswith("zsq_engine.") or _subpackage(module) == own:
                continue
            parts = module.split(".")
            if len(parts) == 2:  # zsq_engine.<x>: a root module or a subpackage's __init__
                private_parts = []
            else:
                private_parts = [p for p in parts[2:] if _private(p)]
            private_names = [n for n in names if _private(n)] if len(parts) > 2 or not _private(parts[1]) else []
            if private_parts or private_names:
                bad.append(f"{path.relative_to(REPO)}:{line} {module} {private_names or ''}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)
