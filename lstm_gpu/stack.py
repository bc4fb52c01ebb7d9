"""A whole LSTM stack (every layer, both directions) in one kernel launch per pass, as PyTorch custom ops.

    lstm_gpu::stack_fwd  gates_x0, w_ih, w_hh, bias?, h0, c0, lengths?, dropout, seed? -> y, h_n, c_n, gates, cells, x
    lstm_gpu::stack_bwd  dy, dh_n, dc_n, saved tensors, dropout, seed?                 -> dz, dh0, dc0

The recurrence of all layers is kernels/triton_stack.py; around it, ordinary PyTorch: layer 0's input
projection for all steps and both directions (one GEMM, before), the weight gradients (GEMMs, after). The ops
are opaque to torch.compile (fake functions give exact shapes) and tied by ``register_autograd``. ``stack``
is what ``lstm_gpu.LSTM`` calls when the stack fits (``unsupported`` says why not).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .functional import needs_saving


def _kernels():
    return importlib.import_module("lstm_gpu.kernels.triton_stack")


def unsupported(*, device: torch.device, dtype: torch.dtype, hidden_size: int, num_layers: int, bidirectional: bool,
                batch: int, proj_size: int = 0) -> str | None:
    """Why the one-launch stack cannot run this call (then: per-layer launches), or None."""
    from .kernels.triton_stack_config import unsupported_reason      # plain host code, no triton import
    return unsupported_reason(device=torch.device(device), dtype=dtype, hidden_size=hidden_size,
                              num_layers=num_layers, bidirectional=bidirectional, batch=batch, proj_size=proj_size)


@torch.library.custom_op("lstm_gpu::stack_fwd", mutates_args=())
def stack_fwd(gates_x0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None, h0: Tensor, c0: Tensor,
              lengths: Tensor | None, dropout: float, seed: Tensor | None, save: bool
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    y, h_n, c_n, gates, cells, x = _kernels().stack_fwd(
        gates_x0.contiguous(), w_ih.contiguous(), w_hh.contiguous(), None if bias is None else bias.contiguous(),
        h0.contiguous(), c0.contiguous(), lengths, dropout=dropout, seed=seed, save=save)
    empty = gates_x0.new_empty(0, dtype=reference.accumulation_dtype(gates_x0.dtype))
    return (y, h_n, c_n, empty if gates is None else gates, empty.clone() if cells is None else cells,
            gates_x0.new_empty(0) if x is None else x)


def _saved_shapes(L, T, B, D, H, dropout, save):
    if not save:
        return (0,), (0,), (0,)
    return (L, T, B, D * 4 * H), (L, T, B, D * H), ((L - 1, T, B, D * H) if L > 1 and dropout > 0 else (0,))


@stack_fwd.register_fake
def _(gates_x0, w_ih, w_hh, bias, h0, c0, lengths, dropout, seed, save):
    L, D, G, H = w_hh.shape
    T, B, _ = gates_x0.shape
    acc = reference.accumulation_dtype(gates_x0.dtype)
    g, c, x = _saved_shapes(L, T, B, D, H, dropout, True)
    if not save:
        g = c = (0,)
    return (gates_x0.new_empty(L, T, B, D * H), h0.new_empty(L * D, B, H), c0.new_empty(L * D, B, H),
            gates_x0.new_empty(g, dtype=acc), gates_x0.new_empty(c, dtype=acc), gates_x0.new_empty(x))


@torch.library.custom_op("lstm_gpu::stack_bwd", mutates_args=())
def stack_bwd(dy: Tensor, dh_n: Tensor, dc_n: Tensor, gates: Tensor, cells: Tensor, c0: Tensor, w_ih: Tensor,
              w_hh: Tensor, lengths: Tensor | None, dropout: float, seed: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels().stack_bwd(dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), gates, cells, c0.contiguous(),
                                w_ih.contiguous(), w_hh.contiguous(), lengths, dropout=dropout, seed=seed)


@stack_bwd.register_fake
def _(dy, dh_n, dc_n, gates, cells, c0, w_ih, w_hh, lengths, dropout, seed):
    L, D, G, H = w_hh.shape
    T, B, _ = dy.shape
    return (gates.new_empty(L, T, B, D * G), gates.new_empty(L * D, B, H), gates.new_empty(L * D, B, H))


def _setup_context(ctx, inputs, output):
    gates_x0, w_ih, w_hh, bias, h0, c0, lengths, dropout, seed, save = inputs
    y, _, _, gates, cells, x = output
    ctx.missing_saved = not save
    ctx.dropout, ctx.has_bias = dropout, bias is not None
    ctx.save_for_backward(gates, cells, y, x, w_ih, w_hh, h0, c0, lengths, seed)    # seed: backward's mask


def _backward(ctx, dy_all, dh_n, dc_n, _dgates, _dcells, _dx):
    """The recurrence of every layer in one launch (``stack_bwd``), then the weight gradients as GEMMs. Only
    the top layer's slot of y is ever handed to users (lstm_gpu.LSTM returns ``y[-1]``), so only its gradient
    is read: the lower slots are the kernel's working memory, reached through dz."""
    if ctx.missing_saved:
        raise RuntimeError("lstm_gpu::stack_fwd was called with save=False, so it cannot be differentiated")
    gates, cells, y, x, w_ih, w_hh, h0, c0, lengths, seed = ctx.saved_tensors
    L, D, G, H = w_hh.shape
    T, B = y.shape[1], y.shape[2]
    dy = torch.zeros_like(y[-1]) if dy_all is None else dy_all[-1]
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    dz, dh0, dc0 = stack_bwd(dy, dh_n, dc_n, gates, cells, c0, w_ih, w_hh, lengths, ctx.dropout, seed)
    dz = dz.to(y.dtype)
    per_dir = dz.view(L, T * B, D, G)                           # [L, T·B, D, 4H]
    dw_hh = torch.stack([torch.stack([
        reference.weight_grad_hh(per_dir[l, :, d].view(T, B, G), y[l, ..., d * H:(d + 1) * H], h0[l * D + d],
                                 lengths, d == 1) for d in range(D)]) for l in range(L)]).to(w_hh.dtype)
    dw_ih = dbias = None
    if L > 1:
        inputs = (x if x.numel() else y[:-1]).reshape(L - 1, T * B, D * H)         # what layers 1 … read
        dw_ih = torch.einsum("lndg,lnk->ldgk", per_dir[1:], inputs).to(w_ih.dtype)
        dbias = per_dir[1:].sum(1) if ctx.has_bias else None
    return (dz[0], dw_ih, dw_hh, dbias, dh0.to(h0.dtype), dc0.to(c0.dtype), None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("lstm_gpu: the one-launch stack's gradients (backend 'triton') cannot be differentiated "
                       "again (double backward; torch's cuDNN LSTM has none either); backend='reference' supports it")


stack_fwd.register_autograd(_backward, setup_context=_setup_context)
stack_bwd.register_autograd(_no_double_backward)


class _SameWeightsAtBackward(torch.autograd.Function):
    """The identity on ``stacked``, saving the parameters: autograd's version check then raises at backward if one
    of them was changed in place after the forward (optimizer.step() before backward()), as it does for nn.LSTM
    (eager, without autocast: under autocast both save the cast copies, and compiled graphs do not check). The
    stack runs on stacked copies, so without it such gradients were silently those of the old weights."""

    @staticmethod
    def forward(ctx, stacked, *weights):
        ctx.save_for_backward(*weights)
        return stacked.view_as(stacked)

    @staticmethod
    def backward(ctx, grad):
        return (grad,) + (None,) * len(ctx.saved_tensors)      # reading saved_tensors is the version check


def stack(x: Tensor, weights: list[list[Tensor | None]], h0: Tensor, c0: Tensor, lengths: Tensor | None, *,
          bidirectional: bool, dropout: float, training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The whole stack on arguments already checked (``lstm_gpu.LSTM`` calls it): ``x`` [T, B, I] time-major,
    ``weights[k]`` = [w_ih, w_hh, b_ih, b_hh] of layer k // D, direction k % D (biases None or both given),
    ``h0``/``c0`` [L·D, B, H], ``lengths`` int64 on the device or None. Returns y [T, B, D·H], h_n, c_n."""
    D = 2 if bidirectional else 1
    L = len(weights) // D
    H = weights[0][1].shape[1]
    has_bias = weights[0][2] is not None
    w_ih0 = torch.cat([weights[d][0] for d in range(D)])                       # [D·4H, I]
    b0 = torch.cat([weights[d][2] + weights[d][3] for d in range(D)]) if has_bias else None
    gates_x0 = F.linear(x, w_ih0, b0)                                          # [T, B, D·4H]: one GEMM
    w_hh = torch.stack([w[1] for w in weights]).view(L, D, 4 * H, H)
    upper = weights[D:]
    if upper:
        w_ih = torch.stack([w[0] for w in upper]).view(L - 1, D, 4 * H, D * H)
        bias = torch.stack([w[2] + w[3] for w in upper]).view(L - 1, D, 4 * H) if has_bias else None
    else:
        w_ih, bias = w_hh.new_empty(0, D, 4 * H, D * H), None
    drop = dropout if training and L > 1 else 0.0
    # The mask's seed stays a tensor, drawn from torch's generator on the device and loaded by the kernels: no host
    # sync, and torch.compile traces it (as a host int it was a .item(): a graph break, or with fullgraph an
    # unbacked int in the graph).
    seed = torch.randint(2 ** 31 - 1, (1,), device=x.device) if drop > 0 else None
    save = needs_saving(x, h0, c0, *[w for ws in weights for w in ws])     # the leaves, not the stacked copies
    if save and not torch._C._are_functorch_transforms_active():    # a Function without setup_context
        w_hh = _SameWeightsAtBackward.apply(w_hh, *[w for ws in weights for w in ws if w is not None])
    y, h_n, c_n, _, _, _ = stack_fwd(gates_x0, w_ih, w_hh, bias, h0, c0, lengths, drop, seed, save)
    return y[-1], h_n, c_n
