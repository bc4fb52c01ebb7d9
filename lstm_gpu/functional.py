"""``lstm_gpu.lstm``: one LSTM layer, one direction, as a function.

The input projection for all steps is one GEMM (``x · W_ihᵀ + b_ih + b_hh``), done here by PyTorch, so
its gradients (dx, dW_ih, db) are GEMMs too; the recurrence is the custom op of lstm_gpu/ops.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks, ops
from .backends import select_backend


def lstm(input: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None = None,
         bias_hh: Tensor | None = None, h0: Tensor | None = None, c0: Tensor | None = None, *,
         weight_hr: Tensor | None = None, lengths: Tensor | None = None, reverse: bool = False,
         backend: str = "auto") -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run one LSTM layer over a time-major sequence.

    Args:
        input: [T, B, I] (time-major).
        weight_ih: [4H, I]; weight_hh: [4H, P]; bias_ih, bias_hh: [4H] or None. Gate order i, f, g, o.
        h0: [B, P], c0: [B, H]; zeros when None. P = H, or the projection size with ``weight_hr`` [P, H].
        lengths: [B] int, per-sequence lengths, each in 1..T, in any order; the padding past them is never read
            (it is zeroed first, in a copy of the input: a NaN there reached dW_ih through x·W_ihᵀ).
            Past its length a sequence's state is frozen and its output is zero.
        reverse: walk each sequence backwards in time (the reverse half of a bidirectional LSTM).
        backend: "auto", "reference", "cudnn", "triton" or "numba" (see ``lstm_gpu.select_backend``).

    Returns:
        y [T, B, P], (h_n [B, P], c_n [B, H]).

    Example:
        >>> import torch, lstm_gpu
        >>> T, B, I, H = 5, 2, 3, 4
        >>> x = torch.randn(T, B, I)
        >>> w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
        >>> y, (h, c) = lstm_gpu.lstm(x, w_ih, w_hh)
        >>> y.shape, h.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 4]))
    """
    if isinstance(input, Tensor) and ops.autocast_enabled(input.device.type):
        input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr = ops.autocast_cast(
            input.device.type, input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr)
    H, P, host_lengths = checks.check_layer_args(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                                                 lengths, reverse)
    T, B, _ = input.shape
    chosen = select_backend(backend, device=input.device, dtype=input.dtype, hidden_size=H,
                            proj_size=P if weight_hr is not None else 0, batch=B, seq_len=T)
    if lengths is not None:
        lengths = checks.lengths_to_device(lengths, input.device)      # no sync (pinned, non-blocking)
        # Padding never reaches the output, but x·W_ihᵀ runs over it, and autograd's dW_ih = dgatesᵀ·x took
        # 0·NaN = NaN from a NaN or inf there (torch's packed LSTM never reads it): zeroed, as PackedSequence pads.
        steps = torch.arange(T, device=input.device)[:, None, None]
        input = input.masked_fill(steps >= lengths[None, :, None], 0)
    return layer(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, lengths, host_lengths,
                 reverse, chosen)


def layer(input: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
          h0: Tensor | None, c0: Tensor | None, weight_hr: Tensor | None, lengths: Tensor | None,
          host_lengths: Tensor | None, reverse: bool, backend: str) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One layer on arguments already checked: the path ``lstm()`` and ``LSTM.forward`` share.

    Trusts its caller: shapes, dtypes and devices agree (autocast casts done), ``lengths`` is int64 on the
    input's device (``host_lengths`` the same on the CPU, or None), ``backend`` is concrete (not "auto").
    """
    T, B, _ = input.shape
    if h0 is None:
        h0 = input.new_zeros(B, weight_hh.shape[1])
    if c0 is None:
        c0 = input.new_zeros(B, weight_hh.shape[0] // 4)
    if B == 0 and (backend != "cudnn" or lengths is not None):   # nothing to compute: no kernel launch
        backend = "reference"                                     # (and torch cannot pack an empty batch)
    if backend == "cudnn":
        return _torch_lstm(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, lengths, reverse,
                           host_lengths)

    bias = None
    if bias_ih is not None:
        bias = bias_ih + bias_hh
    gates_x = F.linear(input, weight_ih, bias)
    save = needs_saving(input, weight_ih, bias_ih, bias_hh, h0, c0, weight_hh, weight_hr)   # the leaves, not gates_x
    if weight_hr is not None and backend != "reference":
        return _folded_projection(gates_x, h0, c0, weight_hh, weight_hr, lengths, reverse, backend, save)
    y, h_n, c_n, _, _ = ops.layer(gates_x, h0, c0, weight_hh, weight_hr, lengths, reverse, backend, save)
    return y, (h_n, c_n)


def needs_saving(*tensors: Tensor | None) -> bool:
    """Whether the forward keeps what backward needs (``save``): autograd will differentiate it. Asked of the
    leaves (parameters, input, state), not of tensors computed from them: under no_grad those never require it. While
    torch.jit.trace records, from ``requires_grad`` alone: a trace bakes the flag in as a constant, and its check
    re-traces without gradients (the grad mode made the two graphs differ); a model traced with trainable
    parameters trains, one traced frozen saves nothing."""
    wanted = any(t is not None and t.requires_grad for t in tensors)
    return wanted if torch.jit.is_tracing() else torch.is_grad_enabled() and wanted


def _folded_projection(gates_x: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, weight_hr: Tensor,
                       lengths: Tensor | None, reverse: bool, backend: str, save: bool
                       ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """An LSTM with projections (proj_size P) on the kernels, which run LSTMs without: the projection folded
    into the recurrent weight.

        r_t = o ⊙ tanh(c_t)   (H wide)      h_t = r_t · W_hrᵀ   (P wide)
        h_{t-1} · W_hhᵀ = r_{t-1} · (W_hh · W_hr)ᵀ

    so the kernel runs an ordinary LSTM of H units carrying r, with W_eff = W_hh · W_hr [4H, H] as its recurrent
    weight: still ONE grid barrier per step (carrying h, the projection would be a second reduction over all H
    units, a second barrier every step). h0 has no r behind it: it enters as h0 · W_hhᵀ added to the gates of
    each sequence's first step (t = 0, or its last valid step walking in reverse), with r_{-1} = 0. After the
    recurrence y = r · W_hrᵀ and h_n = r_n · W_hrᵀ are GEMMs (padding stays zero: r is zero there). All of it
    is differentiable PyTorch around the op, so autograd chains the gradients of W_hh, W_hr and h0.
    The price: W_eff is [4H, H] on chip instead of [4H, P], and each step exchanges r (H wide) instead of h.
    """
    T, B, _ = gates_x.shape
    rows = torch.arange(B, device=gates_x.device)
    if not reverse:
        first = torch.zeros_like(rows)
    elif lengths is None:
        first = torch.full_like(rows, T - 1)
    else:
        first = lengths - 1
    gates_x.index_put_((first, rows), F.linear(h0, weight_hh), accumulate=True)   # fresh from F.linear: no copy
    w_eff = weight_hh @ weight_hr
    r, r_n, c_n, _, _ = ops.layer(gates_x, h0.new_zeros(B, weight_hr.shape[1]), c0, w_eff, None, lengths,
                                      reverse, backend, save)
    return F.linear(r, weight_hr), (F.linear(r_n, weight_hr), c_n)


def _reverse_index(T: int, lengths: Tensor | None, B: int, device) -> Tensor:
    """idx[t, b]: the step that lands at t when each sequence is reversed within its own length."""
    t = torch.arange(T, device=device)[:, None].expand(T, B)
    if lengths is None:
        return T - 1 - t
    L = lengths[None, :]
    return torch.where(t < L, L - 1 - t, t)


def _torch_lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths, reverse, host_lengths=None):
    """The "cudnn" backend for one layer: torch's own LSTM (reverse = run on time-reversed sequences).
    Packing wants the lengths on the host: ``host_lengths`` when the caller has them (no copy back)."""
    T, B, _ = x.shape
    if reverse:
        idx = _reverse_index(T, lengths, B, x.device)
        x = x.gather(0, idx[..., None].expand_as(x))
    weights = [w for w in (w_ih, w_hh, b_ih, b_hh, w_hr) if w is not None]
    if lengths is None:
        y, h_n, c_n = torch._VF.lstm(x, (h0[None], c0[None]), weights, b_ih is not None, 1, 0.0, False,
                                     False, False)
    else:   # torch's packed LSTM wants the batch sorted by decreasing length
        rnn = torch.nn.utils.rnn
        packed = rnn.pack_padded_sequence(x, lengths.cpu() if host_lengths is None else host_lengths,
                                          enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx = (h0[None].index_select(1, order), c0[None].index_select(1, order))
        y, h_n, c_n = torch._VF.lstm(packed.data, packed.batch_sizes, hx, weights, b_ih is not None,
                                     1, 0.0, False, False)
        y, _ = rnn.pad_packed_sequence(rnn.PackedSequence(y, packed.batch_sizes, order, unorder), total_length=T)
        h_n, c_n = h_n.index_select(1, unorder), c_n.index_select(1, unorder)
    if reverse:
        y = y.gather(0, idx[..., None].expand_as(y))
    return y, (h_n[0], c_n[0])
