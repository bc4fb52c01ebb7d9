"""Test setup shared by every test file.

- Without a CUDA GPU, the kernel backends run emulated on CPU: TRITON_INTERPRET=1 and
  NUMBA_ENABLE_CUDASIM=1 are set here, before triton or numba is first imported.
- fp32 matmuls are IEEE in tests (TRITON_F32_DEFAULT=ieee; TF32 off in torch), so a 1e-5 tolerance means it.
- Every ``torch.empty``-style allocation made by lstm_gpu code is filled with NaN, so a kernel that forgets
  to write an element fails loudly instead of passing on leftover zeros.
- Tests marked ``gpu`` are skipped when CUDA is not available.
"""
import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

import pytest  # noqa: E402


def _nan_filled(alloc):
    def wrapper(*args, **kwargs):
        t = alloc(*args, **kwargs)
        if torch.compiler.is_compiling():
            return t
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("lstm_gpu") and t.is_floating_point() and t.device.type != "meta":
            t.fill_(float("nan"))
        return t
    return wrapper


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
