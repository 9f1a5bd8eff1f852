"""Shared test set-up.

Triton kernels run on the CPU through the interpreter, which is read when a kernel is
decorated, so it is switched on here, before anything imports ``zsq_engine.kernels``, whenever
no GPU is visible. ``DEVICES`` lists the devices every op test runs on.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Lines a test left in ``config.zsq_summary_lines`` (e.g. how many kernels it compiled)."""
    for line in getattr(config, "zsq_summary_lines", []):
        terminalreporter.write_line(line)
