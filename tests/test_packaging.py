"""Packaging: import never breaks, and ``kernels/`` ships as ``zsq_engine.kernels``.

The import checks run in fresh interpreters so that what this test process already imported
(torch, triton, the extension) cannot hide a failure.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A meta-path finder that makes `import triton` and `import zsq_engine._C` fail, as on a machine
# without Triton and without a built extension.
BLOCKER = """
import importlib.abc, sys

class _Blocker(importlib.abc.MetaPathFinder):
    BLOCKED = ("triton", "zsq_engine._C")

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
"""


def _installed() -> bool:
    try:
        importlib.metadata.distribution("zsq_engine")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run_python(code: str, cwd: Path, extra_path: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_import_without_triton_and_extension():
    code = BLOCKER + """
import json
import zsq_engine
from zsq_engine import _ext

status = _ext.extension_status()
assert _ext.get_extension() is None
try:
    _ext.require_extension("cpu")
except RuntimeError as exc:
    message = str(exc)
else:
    raise AssertionError("require_extension did not raise")
print(json.dumps({"status": status, "message": message,
                  "triton_loaded": "triton" in sys.modules,
                  "version": zsq_engine.__version__}))
"""
    result = _run_python(code, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    status = report["status"]
    assert set(status) == {"built", "cpu", "cuda", "error"}
    assert status["built"] is False and status["cpu"] is False and status["cuda"] is False
    assert "zsq_engine._C" in status["error"]
    assert "pip install -e . --no-build-isolation" in report["message"]
    assert not report["triton_loaded"]
    from zsq_engine._version import __version__

    assert report["version"] == __version__


@pytest.mark.subprocess
def test_import_is_lazy():
    """`import zsq_engine` loads neither the extension nor triton by itself."""
    code = """
import json, sys
import zsq_engine
print(json.dumps(sorted(m for m in sys.modules if m in ("zsq_engine._C", "triton"))))
"""
    result = _run_python(code, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_require_extension_rejects_unknown_part():
    from zsq_engine._ext import require_extension

    with pytest.raises(ValueError, match="part must be"):
        require_extension("gpu")


@pytest.mark.subprocess
@pytest.mark.skipif(not _installed(), reason="zsq_engine is not pip-installed")
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_kernels_importable_as_subpackage(where, tmp_path):
    # No PYTHONPATH: this checks the installed mapping of kernels/ -> zsq_engine.kernels.
    cwd = REPO if where == "repo_root" else tmp_path
    code = "import zsq_engine.kernels as k, zsq_engine._version as v; print(k.__file__); print(v.__version__)"
    result = _run_python(code, cwd=cwd, extra_path=False)
    assert result.returncode == 0, result.stderr
    kernels_file, version = result.stdout.strip().splitlines()[-2:]
    assert Path(kernels_file).name == "__init__.py"
    assert version == importlib.metadata.version("zsq_engine")


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_contains_kernels_subpackage(tmp_path):
    """A regular wheel ships kernels/ as zsq_engine/kernels/ (extension skipped for speed)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for folder in ("zsq_engine", "kernels", "csrc"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    (src / "kernels" / "probe_kernel.py").write_text('"""probe"""\n')
    has_models = (src / "zsq_engine" / "models" / "__init__.py").exists()
    if has_models:  # package data: committed weights ship inside the wheel
        (src / "zsq_engine" / "models" / "weights").mkdir(exist_ok=True)
        (src / "zsq_engine" / "models" / "weights" / "probe.pt").write_bytes(b"probe")

    env = dict(os.environ, ZSQ_SKIP_EXT="1", PIP_NO_INPUT="1")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp_path / "dist"), str(src)]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list((tmp_path / "dist").glob("zsq_engine-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "zsq_engine/kernels/__init__.py" in names
    assert "zsq_engine/kernels/probe_kernel.py" in names
    assert "zsq_engine/_version.py" in names
    assert not any(n.startswith("kernels/") for n in names), "kernels/ leaked as a top-level package"
    if has_models:
        assert "zsq_engine/models/weights/probe.pt" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "zsq = zsq_engine.cli:main" in zipfile.ZipFile(wheels[0]).read(entry_points).decode()
