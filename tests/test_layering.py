"""Layering of the op code: the kernels sit below the op layer and the leaf ``zsq_engine.opspec``
sits below both (docs/architecture.md, "Ops and kernels").

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
