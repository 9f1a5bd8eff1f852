"""Shared test set-up.

Triton kernels run on the CPU through the interpreter, which is read when a kernel is
decorated, so it is switched on here, before anything imports ``zsq_engine.kernels``, whenever
no GPU is visible. ``DEVICES`` lists the devices every op test runs on. Helpers live in
``tests/_support``; the fixtures several modules share are imported here so every module sees them.

Markers (registered in pyproject.toml, ``--strict-markers``): ``slow``, ``interpreter``,
``subprocess``. A test whose ``backend`` parameter is ``"triton"`` is marked ``interpreter``
here, so the op tests' backend parametrizations need no per-parameter marks.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from _support.devices import DEVICES  # noqa: E402
from _support.user_modules import user_module  # noqa: E402, F401  (a shared fixture)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "triton":
            item.add_marker(pytest.mark.interpreter)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Lines a test left in ``config.zsq_summary_lines`` (e.g. how many kernels it compiled)."""
    for line in getattr(config, "zsq_summary_lines", []):
        terminalreporter.write_line(line)
