"""Backend names, which one runs a given call, and the implementations behind the custom op.

    reference  plain PyTorch recurrence (lstm_gpu/reference.py): any device, any dtype, the oracle
    cudnn      torch's own LSTM (torch._VF.lstm: cuDNN on CUDA, ATen's native kernels on CPU)
    triton     persistent fused Triton kernel (kernels/triton_lstm.py)
    numba      persistent fused Numba-CUDA kernel (kernels/numba_lstm.py)
    auto       on CUDA a kernel only where a committed GPU measurement shows it faster than cuDNN
               (lstm_gpu/dispatch.py), else cudnn; elsewhere (the CPU) torch's own LSTM too, but the reference
               recurrence under torch.compile. ``select_backend`` says which, and why

A kernel backend is a module exposing ``unsupported(...) -> str | None`` (why it cannot run a call, or
None) and ``forward`` / ``backward`` with the contract of lstm_gpu/reference.py. A backend named
explicitly never falls back: it runs or raises an error that says why.
"""
from __future__ import annotations

from types import ModuleType

import torch

from . import dispatch
from .checks import LSTMArgumentError
from .dispatch import Choice

BACKENDS = ("auto", "reference", "cudnn", "triton", "numba")


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise LSTMArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")


def kernel_module(backend: str) -> ModuleType:
    """The module implementing a single-layer recurrence for an op backend ("reference", "triton", "numba").

    Import statements, not importlib.import_module: torch.compile's Dynamo traces an import but refuses to call
    importlib's function, so every fullgraph compile of a model with backend="triton" failed here."""
    if backend == "reference":
        from . import reference as module
    elif backend == "triton":
        from .kernels import triton_lstm as module
    elif backend == "numba":
        from .kernels import numba_lstm as module
    else:
        raise ValueError(f"no kernel module for backend={backend!r}")
    return module


def unsupported_reason(backend: str, *, device: torch.device, dtype: torch.dtype, hidden_size: int,
                       proj_size: int = 0, batch: int = 1) -> str | None:
    """Why ``backend`` cannot run a call of this shape, or None if it can. A projection changes nothing for the
    kernels: they run the LSTM of ``hidden_size`` units that carries it folded into W_hh (lstm_gpu/functional.py)."""
    if backend in ("reference", "cudnn"):
        return None
    return kernel_module(backend).unsupported(device=device, dtype=dtype, hidden_size=hidden_size, batch=batch)


def hidden_size_limit(backend: str, *, device: torch.device | str, dtype: torch.dtype, proj_size: int = 0,
                      batch: int = 1) -> int | None:
    """The largest hidden_size ``backend`` runs on ``device`` for this dtype and batch, or None where the
    hidden size is not what limits it: no limit up to 65536 (the CPU emulators run one program holding all
    of W_hh), or a call refused at any size (wrong dtype, no GPU, ...).

    On a GPU the kernels split W_hh over at most one program per SM, so the limit depends on the SM count:
    for triton, H <= 1536 in float16/bfloat16, 1024 in float32, 528 in float64 on an H100 SXM's 132 SMs.
    """
    device = torch.device(device)

    def runs(h: int) -> bool:
        return unsupported_reason(backend, device=device, dtype=dtype, hidden_size=h, proj_size=proj_size,
                                  batch=batch) is None
    lo, hi = 1, 1 << 16
    if not runs(lo) or runs(hi):
        return None
    while hi - lo > 1:                  # runs(lo), not runs(hi): the fit shrinks as H grows
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if runs(mid) else (lo, mid)
    return lo


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            p = torch.cuda.get_device_properties(device)
        except (RuntimeError, AssertionError):      # a device that cannot be queried: the error still raises
            return str(device)
        return f"{device}: {p.name}, {p.multi_processor_count} SMs"
    return str(device)


def select_backend(backend: str, *, device: torch.device | str, dtype: torch.dtype, hidden_size: int,
                   proj_size: int = 0, batch: int = 1, seq_len: int | None = None, num_layers: int = 1,
                   bidirectional: bool = False, explain: bool = False) -> str | Choice:
    """Resolve ``backend`` (possibly "auto") to the concrete backend that will run the call.

    "auto": on CUDA, a kernel only where the dispatch table (lstm_gpu/dispatch.py) holds a GPU measurement
    showing it faster than cuDNN for this GPU, dtype, (num_layers, bidirectional) and (batch, hidden, seq_len)
    bucket, else cudnn; on
    any other device "cudnn" too (torch's own LSTM: ATen's on the CPU), except while torch.compile traces
    the call: there the reference recurrence, one op opaque to the compiler (torch's LSTM would be
    unrolled step by step and recompiled for every sequence length). ``explain=True`` returns a
    ``Choice`` (backend, reason, and the table row that decided, or None where no measurement did)
    instead of the name.

    >>> select_backend("auto", device="cpu", dtype=torch.float32, hidden_size=64)
    'cudnn'
    >>> select_backend("auto", device="cpu", dtype=torch.float32, hidden_size=64, explain=True).reason
    "auto on cpu: torch's own LSTM (the reference recurrence took 2-8x its time here; the kernels run on CUDA)"
    """
    check_backend_name(backend)
    device = torch.device(device)
    if backend == "auto":
        choice = _auto(device, dtype, hidden_size, proj_size, batch, seq_len, num_layers, bidirectional)
        return choice if explain else choice.backend
    reason = unsupported_reason(backend, device=device, dtype=dtype, hidden_size=hidden_size,
                                proj_size=proj_size, batch=batch)
    if reason is not None:
        limit = hidden_size_limit(backend, device=device, dtype=dtype, proj_size=proj_size, batch=batch)
        if limit is not None and hidden_size > limit:
            reason += (f"; on the device this call targets ({_describe_device(device)}) backend={backend!r} "
                       f"runs hidden_size <= {limit} for {dtype}")
        raise ValueError(f"backend={backend!r} cannot run this call: {reason}")
    return Choice(backend, "named explicitly") if explain else backend


def _auto(device: torch.device, dtype: torch.dtype, hidden_size: int, proj_size: int, batch: int,
          seq_len: int | None, num_layers: int = 1, bidirectional: bool = False) -> Choice:
    if device.type != "cuda":
        if torch.compiler.is_compiling():
            return Choice("reference", f"auto on {device.type} under torch.compile: the reference recurrence, "
                          "one opaque op (torch's LSTM would be unrolled and recompiled per sequence length)")
        # measured on a 2-core CPU machine (forward + backward): T100 B16 H256 20.7 ms torch, 58.3 reference (2
        # layers bidirectional: 133 and 267); T50 B1 H64 1.0 ms torch, 8.2 reference
        return Choice("cudnn", f"auto on {device.type}: torch's own LSTM (the reference recurrence took "
                      "2-8x its time here; the kernels run on CUDA)")
    if proj_size:
        return Choice("cudnn", "proj_size > 0: no GPU measurement of the kernels with a projection, cuDNN")
    choice = dispatch.measured_choice(device, dtype, batch=batch, hidden_size=hidden_size, seq_len=seq_len,
                                      num_layers=num_layers, bidirectional=bidirectional)
    if choice.backend == "cudnn":
        return choice
    reason = unsupported_reason(choice.backend, device=device, dtype=dtype, hidden_size=hidden_size,
                                proj_size=proj_size, batch=batch)
    if reason is not None:
        return Choice("cudnn", f"{choice.reason}, but {choice.backend} cannot run this call ({reason}): cuDNN",
                      choice.row)
    return choice
