"""The import rules between packages (docs/architecture.md, "Pipelines and foundations"), read
from the source with ``ast`` so that a lazy import inside a function counts as much as one at the top."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "zsq_engine"


def _module_path(path: Path) -> list:
    parts = ["zsq_engine", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(path: Path):
    """``(line, dotted name)`` for every ``zsq_engine`` name a file imports, relative imports resolved."""
    me = _module_path(path)
    package = me if path.name == "__init__.py" else me[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "zsq_engine":
                target = node.module.split(".")
            else:
                continue
            for alias in node.names:
                yield node.lineno, ".".join(target + [alias.name])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "zsq_engine":
                    yield node.lineno, alias.name


def source_files(package: str = ""):
    files = sorted((ROOT / package).rglob("*.py")) if package else sorted(ROOT.rglob("*.py"))
    assert files, f"no Python files under {ROOT / package}"
    return files


def top_package(dotted: str) -> str:
    parts = dotted.split(".")
    return ".".join(parts[:2])


def private_of_another_package(importer: Path, name: str) -> bool:
    """A ``_name`` owned by a sibling package: ``zsq_engine.X.<...>._y`` imported from outside X.

    Private modules of the root package itself (``zsq_engine._ext``, ``_version``) belong to
    every subpackage, as Python's convention has it for a package's own children."""
    parts = name.split(".")
    private_at = [i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")]
    if not private_at or private_at[0] < 2:
        return False
    return top_package(name) != top_package(".".join(_module_path(importer)))


def test_the_resolver_sees_relative_and_lazy_imports():
    """The checker itself: a relative import two levels up and one inside a function both count."""
    loop = ROOT / "qat" / "loop.py"
    names = dict((n, line) for line, n in imported_names(loop))
    assert "zsq_engine.quant.calibrate_activations" in names
    assert "zsq_engine.utils.model_fingerprint" in names
    assert "zsq_engine.synth.synthesize" in names  # imported inside a method
    assert private_of_another_package(loop, "zsq_engine.synth.api._model_fingerprint")
    assert not private_of_another_package(loop, "zsq_engine.qat.student._private")
    assert not private_of_another_package(ROOT / "ops" / "backends" / "cpu.py", "zsq_engine._ext.get_extension")


@pytest.mark.slow
def test_no_module_imports_a_private_name_of_another_package():
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {name}"
           for path in source_files() for line, name in imported_names(path)
           if private_of_another_package(path, name)]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_utils_imports_no_pipeline():
    """utils is the neutral floor: every pipeline may import it, so it imports none of them."""
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {name}"
           for path in source_files("utils") for line, name in imported_names(path)
           if top_package(name) != "zsq_engine.utils"]
    assert not bad, "zsq_engine.utils imports other packages:\n" + "\n".join(bad)


ARCHITECTURES = ("zsq_engine.models.resnet", "zsq_engine.models.mobilenetv2", "zsq_engine.models.efficientnet_lite",
                 "zsq_engine.models.fmnist_resnet")


@pytest.mark.parametrize("package", ["recon", "runtime", "qat"])
def test_pipelines_import_no_architecture(package):
    """Block types and padding modules come from models.roles, declared by the model code."""
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {name}"
           for path in source_files(package) for line, name in imported_names(path)
           if any(name == a or name.startswith(a + ".") for a in ARCHITECTURES)]
    assert not bad, f"zsq_engine.{package} imports architectures:\n" + "\n".join(bad)


def test_models_declare_their_blocks_and_padding():
    from torch import nn

    from zsq_engine.models import efficientnet_lite, mobilenetv2, resnet, roles
    from zsq_engine.recon import BLOCK_TYPES

    assert BLOCK_TYPES is roles.BLOCK_TYPES  # recon.register_block_type extends the declared list
    for cls in (resnet.BasicBlock, resnet.Bottleneck, mobilenetv2.InvertedResidual, efficientnet_lite.MBConvBlock):
        assert cls in roles.BLOCK_TYPES
    assert roles.SAME_PADDING_TYPES == [efficientnet_lite.SamePad2d]
    assert roles.MOBILENET_BLOCK_TYPES == [mobilenetv2.InvertedResidual]
    assert roles.has_mobilenet_blocks(mobilenetv2.mobilenet_v2(num_classes=3))
    assert not roles.has_mobilenet_blocks(resnet.resnet18(num_classes=3))
    pad = efficientnet_lite.SamePad2d(3, 2)
    assert roles.is_same_padding(pad) and not roles.is_same_padding(nn.ZeroPad2d(1))
    assert roles.is_block(resnet.BasicBlock(4, 4)) and not roles.is_block(nn.Conv2d(4, 4, 3))
    with pytest.raises(TypeError, match="same_padding takes an nn.Module subclass"):
        roles.same_padding(int)


def test_runtime_imports_nothing_from_recon_or_qat():
    """The runtime reads quantizers through zsq_engine.quant.protocol, never by class."""
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {name}"
           for path in source_files("runtime") for line, name in imported_names(path)
           if top_package(name) in ("zsq_engine.recon", "zsq_engine.qat")]
    assert not bad, "zsq_engine.runtime imports recon / qat:\n" + "\n".join(bad)
