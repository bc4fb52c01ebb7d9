"""Host-side logic shared by the Triton and Numba-CUDA backends: where they may run, and the shape
and dtype checks. The kernels themselves are each language's own (triton_lstm.py, numba_lstm.py).

CPU runs: the Triton interpreter (TRITON_INTERPRET=1) and the Numba simulator (NUMBA_ENABLE_CUDASIM=1)
run programs/blocks one at a time, so a grid barrier across several of them would deadlock; on CPU the
backends use their one-program / one-block configuration of the same kernels.
"""
from __future__ import annotations

import contextlib
import os

import torch

ENV_FOR_CPU = {"triton": "TRITON_INTERPRET", "numba": "NUMBA_ENABLE_CUDASIM"}


def cpu_emulation(backend: str) -> bool:
    """True when ``backend`` runs its kernels on CPU tensors (Triton interpreter / Numba simulator)."""
    return os.environ.get(ENV_FOR_CPU[backend], "0") == "1"


def common_unsupported(backend: str, *, device: torch.device, dtype: torch.dtype,
                       dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Reasons shared by both kernel backends for refusing a call, or None. (Projections are no reason: the
    kernels run an LSTM with one folded into its recurrent weight, lstm_gpu/functional.py.)"""
    if device.type == "cpu":
        if not cpu_emulation(backend):
            var = ENV_FOR_CPU[backend]
            return (f"CPU tensors need {var}=1 set before the {backend} module is first imported "
                    f"(the {backend} kernels then run emulated on CPU); otherwise move the model and "
                    f"input to CUDA, or use backend='reference'")
    elif device.type == "meta":     # shapes only (the ops' fake functions), any floating dtype, as nn.LSTM allows
        return None
    elif device.type != "cuda":
        return f"the {backend} kernels run on CUDA devices, got device {device}"
    if dtype not in dtypes:
        return f"dtype {dtype} is not supported (supported: {', '.join(str(d) for d in dtypes)})"
    return None


def device_index(device: torch.device) -> int:
    """The CUDA device index a call on ``device`` runs on: its own index, or the current device for a
    bare "cuda" (which is what torch means by it)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device for a launch, restoring the previous one after.

    Triton launches on the current device and its current stream, whatever device the tensors are on;
    with tensors on cuda:1 and cuda:0 current, the kernel would be launched on the wrong GPU. A no-op
    for CPU tensors (the interpreter).
    """
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def lengths_or_full(lengths: torch.Tensor | None, T: int, B: int, device) -> torch.Tensor:
    """Per-sequence lengths as int32 on ``device``; every sequence has length T when none are given."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)
