"""Argument checks with errors that name the argument.

Errors are ``LSTMArgumentError``, both a ValueError and a RuntimeError: nn.LSTM raises either for bad
input, so code written against nn.LSTM keeps catching what it caught.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LSTMArgumentError(ValueError, RuntimeError):
    """A malformed argument to lstm_gpu.LSTM or lstm_gpu.lstm."""


def fail(message: str):
    raise LSTMArgumentError(message)


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_tensor(name: str, t, shape: tuple, like: Tensor, check_dtype: bool = True) -> None:
    """``t`` is a tensor of ``shape`` with ``like``'s device (and dtype, if ``check_dtype``)."""
    if not isinstance(t, Tensor):
        fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if _shape(t) != tuple(shape):
        fail(f"{name} must have shape {tuple(shape)}, got {_shape(t)}")
    if check_dtype and t.dtype != like.dtype:
        fail(f"{name} has dtype {t.dtype} but input has dtype {like.dtype}: they must match")
    if t.device != like.device:
        fail(f"{name} is on {t.device} but input is on {like.device}: they must be on the same device")


def check_input(input, name: str = "input", ndim: int = 3) -> None:
    if not isinstance(input, Tensor):
        fail(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != ndim:
        fail(f"{name} must have {ndim} dimensions, got {input.dim()} (shape {_shape(input)})")
    if input.dtype not in FLOAT_DTYPES:
        fail(f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {input.dtype}")
    if input.shape[0] == 0:
        fail(f"{name} has 0 time steps: the sequence length must be at least 1")


def check_lengths(lengths, T: int, B: int) -> Tensor | None:
    """Checks ``lengths``; returns them as int64 on the host (None while torch.compile traces).

    The values are checked on the host copy, never on a GPU tensor (``int(t.min())`` there is a device
    sync). Lengths already on the CPU, as torch's packing functions want them, cost no sync at all; GPU
    lengths cost one copy to the host (one sync), taken once per call.
    """
    if not isinstance(lengths, Tensor):
        fail(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        fail(f"lengths must be an integer tensor, got {lengths.dtype}")
    if _shape(lengths) != (B,):
        fail(f"lengths must have shape ({B},) (one length per sequence), got {_shape(lengths)}")
    if torch.compiler.is_compiling():
        return None
    if lengths.device.type == "meta":
        fail("lengths are on the meta device, which holds no values: give them on the CPU (as PackedSequence keeps "
             "them) or on the input's device")
    host = lengths.to(device="cpu", dtype=torch.int64)
    if B:
        lo, hi = int(host.min()), int(host.max())
        if lo < 1:
            fail(f"lengths must all be >= 1, got a length of {lo}")
        if hi > T:
            fail(f"lengths must all be <= the sequence length {T}, got a length of {hi}")
    return host


def lengths_to_device(lengths: Tensor | None, device: torch.device) -> Tensor | None:
    """``lengths`` as int64 on ``device``, without a device sync.

    A copy from pageable host memory to a GPU makes the host wait; from pinned memory with
    ``non_blocking=True`` it does not (the caching host allocator keeps the pinned block until the copy is
    done). GPU lengths move or cast on the GPU, also without a sync.
    """
    if lengths is None:
        return None
    if lengths.device.type == "cpu" and device.type == "cuda" and not torch.compiler.is_compiling():
        return lengths.to(torch.int64).pin_memory().to(device, non_blocking=True)
    return lengths.to(device=device, dtype=torch.int64)


def check_layer_args(input, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths, reverse=False
                     ) -> tuple[int, int, Tensor | None]:
    """Checks the arguments of one layer; returns (hidden size H, output size P, host lengths or None)."""
    check_input(input)
    T, B, I = input.shape
    if not isinstance(w_hh, Tensor) or w_hh.dim() != 2 or w_hh.shape[0] % 4 or w_hh.shape[0] == 0:
        fail(f"weight_hh must be a [4*hidden_size, hidden_size] tensor, got "
             f"{_shape(w_hh) if isinstance(w_hh, Tensor) else type(w_hh).__name__}")
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    if w_hr is None:
        if P != H:      # before weight_ih's check, which would blame weight_ih for a transposed weight_hh
            fail(f"weight_hh must be [4*hidden_size, hidden_size] (without weight_hr), got {_shape(w_hh)}")
    else:
        check_tensor("weight_hr", w_hr, (P, H), input)     # [proj_size, hidden_size]; weight_hh [4H, proj_size]
    check_tensor("weight_hh", w_hh, (4 * H, P), input)
    check_tensor("weight_ih", w_ih, (4 * H, I), input)
    if (b_ih is None) != (b_hh is None):
        fail("bias_ih and bias_hh must be given together or both be None")
    if b_ih is not None:
        check_tensor("bias_ih", b_ih, (4 * H,), input)
        check_tensor("bias_hh", b_hh, (4 * H,), input)
    if h0 is not None:
        check_tensor("h0", h0, (B, P), input)
    if c0 is not None:
        check_tensor("c0", c0, (B, H), input)
    if not isinstance(reverse, bool):       # a truthy "False" would run the recurrence backwards
        fail(f"reverse must be a bool, got {type(reverse).__name__} {reverse!r}")
    host_lengths = None if lengths is None else check_lengths(lengths, T, B)
    return H, P, host_lengths
