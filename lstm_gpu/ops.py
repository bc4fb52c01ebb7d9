"""The single-layer LSTM recurrence as PyTorch custom ops, with autograd.

    lstm_gpu::layer_fwd  gates_x, h0, c0, w_hh, w_hr?, lengths? -> y, h_n, c_n, gates, cells
    lstm_gpu::layer_bwd  dy, dh_n, dc_n, saved tensors          -> dgates_x, dh0, dc0, dw_hh, dw_hr

Both are opaque to torch.compile (their fake functions give exact output shapes), dispatch on a
concrete backend name ("reference", "triton", "numba"), and are tied together by
``register_autograd``. The input projection and its gradients (dx, dW_ih, db) are ordinary PyTorch
GEMMs around the op, in lstm_gpu/functional.py. ``gates`` and ``cells`` are the tensors backward needs;
they are empty when ``save`` is False (inference). Under ``create_graph=True`` the reference backend's
backward is itself differentiable (double backward); the kernel backends' is not, and says so.

The ops trust their arguments (shapes, dtypes, devices, lengths in range): they are the layers' unchecked
path, entered after ``lstm_gpu.lstm`` or ``lstm_gpu.LSTM`` validated the whole call once (checks.py), so a
2-layer bidirectional call is not checked four times over. Call those, not the ops, with untrusted input.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .backends import kernel_module


def _saved_shapes(gates_x: Tensor, save: bool):
    T, B, G = gates_x.shape
    if not save:
        return (0,), (0,)
    return (T, B, G), (T, B, G // 4)


@torch.library.custom_op("lstm_gpu::layer_fwd", mutates_args=())
def layer_fwd(gates_x: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None,
              lengths: Tensor | None, reverse: bool, backend: str, save: bool
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    y, h_n, c_n, gates, cells = kernel_module(backend).forward(
        gates_x.contiguous(), h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
        None if w_hr is None else w_hr.contiguous(), lengths, reverse, save)
    if not save:
        acc = reference.accumulation_dtype(gates_x.dtype)
        gates, cells = gates_x.new_empty(0, dtype=acc), gates_x.new_empty(0, dtype=acc)
    return y, h_n, c_n, gates, cells


@layer_fwd.register_fake
def _(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save):
    T, B, G = gates_x.shape
    P = h0.shape[-1]
    acc = reference.accumulation_dtype(gates_x.dtype)
    g_shape, c_shape = _saved_shapes(gates_x, save)
    return (gates_x.new_empty(T, B, P), gates_x.new_empty(B, P), gates_x.new_empty(B, G // 4),
            gates_x.new_empty(g_shape, dtype=acc), gates_x.new_empty(c_shape, dtype=acc))


@torch.library.custom_op("lstm_gpu::layer_bwd", mutates_args=())
def layer_bwd(dy: Tensor, dh_n: Tensor, dc_n: Tensor, gates: Tensor, cells: Tensor, h0: Tensor, c0: Tensor,
              y: Tensor, w_hh: Tensor, w_hr: Tensor | None, lengths: Tensor | None, reverse: bool,
              backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dgates, dh0, dc0, dw_hr = kernel_module(backend).backward(
        dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), gates, cells, h0.contiguous(),
        c0.contiguous(), y, w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(), lengths, reverse)
    dt = y.dtype
    dgates = dgates.to(dt)
    dw_hh = reference.weight_grad_hh(dgates, y, h0, lengths, reverse).to(w_hh.dtype)
    dw_hr = w_hh.new_empty(0) if dw_hr is None else dw_hr.to(w_hr.dtype)
    return dgates, dh0.to(h0.dtype), dc0.to(c0.dtype), dw_hh, dw_hr


@layer_bwd.register_fake
def _(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse, backend):
    dw_hr = w_hh.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
    return (y.new_empty(gates.shape), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_hh), dw_hr)


def _setup_context(ctx, inputs, output):
    gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save = inputs
    y, _, _, gates, cells = output
    if not save and ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:5]):
        ctx.missing_saved = True
    else:
        ctx.missing_saved = False
    ctx.reverse, ctx.backend, ctx.has_proj = reverse, backend, w_hr is not None
    # the reference backend (what runs on the CPU) also keeps its input, so that its gradients can be
    # differentiated again (create_graph=True), as torch's own CPU LSTM allows
    ctx.save_for_backward(gates, cells, h0, c0, y, w_hh, w_hr, lengths,
                          gates_x if backend == "reference" else None)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcells, functorch=False):
    if ctx.missing_saved:
        raise RuntimeError("lstm_gpu::layer_fwd was called with save=False, so it cannot be differentiated")
    if torch.is_grad_enabled() and ctx.backend == "reference" and not functorch:
        return _differentiable_backward(ctx, dy, dh_n, dc_n)
    layer_bwd_fn = _FunctorchLayerBwd.apply if functorch else layer_bwd
    gates, cells, h0, c0, y, w_hh, w_hr, lengths, _ = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    dgates, dh0, dc0, dw_hh, dw_hr = layer_bwd_fn(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr,
                                                  lengths, ctx.reverse, ctx.backend)
    return dgates, dh0, dc0, dw_hh, (dw_hr if ctx.has_proj else None), None, None, None, None


def _differentiable_backward(ctx, dy, dh_n, dc_n):
    """Backward under create_graph=True on the reference backend: the gradients as a graph of their own
    (double backward: gradient penalties, Hessian-vector products), by re-running the reference forward
    under autograd from the saved inputs and differentiating it. Slower than ``layer_bwd``; only then."""
    _, _, h0, c0, _, w_hh, w_hr, lengths, gates_x = ctx.saved_tensors
    inputs = (gates_x, h0, c0, w_hh, w_hr)
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        y, h_n, c_n, _, _ = reference.forward(gates_x, h0, c0, w_hh, w_hr, lengths, ctx.reverse, save=False)
    pairs = [(out, g) for out, g in ((y, dy), (h_n, dh_n), (c_n, dc_n)) if g is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    result = [None] * 9
    for i, g in zip(wanted, grads):
        result[i] = g
    return tuple(result)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        f"lstm_gpu: the {ctx.backend!r} backend's gradients cannot be differentiated again (double backward; "
        "torch's cuDNN LSTM has none either); backend='reference' supports it")


def _setup_bwd_context(ctx, inputs, output):
    ctx.backend = inputs[-1]


layer_fwd.register_autograd(_backward, setup_context=_setup_context)
layer_bwd.register_autograd(_no_double_backward, setup_context=_setup_bwd_context)


# torch.func transforms (grad, vjp, jacrev, vmap of grad: per-sample gradients). The autograd.Function that
# register_autograd generates has no setup_context staticmethod, which functorch requires of every Function it
# differentiates, so torch.func.grad through the op raised (pytorch/pytorch#168393, #179652, open in torch
# 2.13). Under a transform the op runs inside these Functions instead: the same setup_context and backward,
# first order only on every backend. (The reference's differentiable backward, re-run under
# torch.autograd.grad inside a transform, gave jacrev(jacrev(f)) silently wrong second derivatives: off by 0.4.)
class _FunctorchLayerFwd(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save):
        return layer_fwd(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads, functorch=True)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(
            "lstm_gpu: forward-mode AD (torch.func.jvp, jacfwd, hessian) is not supported; reverse mode is "
            "(grad, vjp, jacrev, vmap of grad: first derivatives)")


class _FunctorchLayerBwd(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return layer_bwd(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_bwd_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("lstm_gpu: inside torch.func transforms the gradients cannot be differentiated again "
                           "(jacrev of jacrev, grad of grad); torch.autograd.grad(..., create_graph=True) with "
                           "backend='reference' can")


def autograd_transform_active() -> bool:
    """Whether a torch.func transform that differentiates (grad, vjp, jacrev, jvp) is running, alone or under
    vmap (False while torch.compile traces). Not any transform: under functionalize (no rule for a Python
    Function) and a plain vmap the op's own registrations serve, as before."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return False                                        # the common case: one C call
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


def transform_active() -> bool:
    """Whether any torch.func transform is running (vmap, grad, functionalize, ...; False while compiling)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def layer(gates_x: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None, lengths: Tensor | None,
          reverse: bool, backend: str, save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``layer_fwd`` with its autograd, under torch.func transforms too."""
    if autograd_transform_active():
        return _FunctorchLayerFwd.apply(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save)
    return layer_fwd(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save)


# Autocast: like torch's own LSTM, the op runs in the autocast dtype (bfloat16 or float16, whichever the
# active autocast asks for; float64 is left alone), and autograd records the casts.
_lib = torch.library.Library("lstm_gpu", "FRAGMENT")


AUTOCAST_DEVICES = ("cpu", "cuda")     # where the op has an autocast kernel (below)


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled on the devices the op casts for, False elsewhere (meta: it would raise).
    Not torch.amp.is_autocast_available: torch 2.11's Dynamo cannot trace it, and every fullgraph compile of
    lstm_gpu.LSTM failed there (seen with torch 2.11 on the CPU; 2.13 traces it)."""
    return device_type in AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def autocast_cast(device_type: str, *tensors):
    """Under autocast, like torch's LSTM: every floating tensor (but float64) in the autocast dtype.
    The casts are recorded by autograd, so gradients reach the parameters in their own dtype."""
    dt = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 and t.device.type == device_type else t for t in tensors)


def _autocast_kernel(device_type: str):
    key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

    def kernel(_keyset, gates_x, h0, c0, w_hh, w_hr, *rest):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return layer_fwd._opoverload(*autocast_cast(device_type, gates_x, h0, c0, w_hh, w_hr), *rest)
    return kernel


for _device_type in AUTOCAST_DEVICES:
    _lib.impl("layer_fwd", _autocast_kernel(_device_type),
              "Autocast" + torch._C._dispatch_key_for_device(_device_type), with_keyset=True)


# Batching rules (torch.func.vmap, e.g. per-sample gradients: vmap(grad(loss))): the vmapped dimension folded into
# the batch, so N samples of B sequences are ONE launch of N·B sequences, not N launches (torch's fallback loops).
# The sequences of an LSTM batch are independent, so only the weight gradient, a sum over the batch, is taken per
# sample here. Batched weights (an ensemble) and projections on the reference backend take the loop.
def _fold(t: Tensor | None, d: int | None, n: int, seq_dim: bool) -> Tensor | None:
    """``t`` with the vmapped dimension ``d`` (None: not batched) merged into its batch dimension (dim 1 of a
    [T, B, ...] tensor when ``seq_dim``, else dim 0 of [B, ...])."""
    if t is None or t.numel() == 0 and t.dim() == 1:       # None, or the empty stand-in of an unsaved tensor
        return t
    t = t.unsqueeze(0).expand(n, *t.shape) if d is None else t.movedim(d, 0)
    if seq_dim:
        return t.transpose(0, 1).reshape(t.shape[1], n * t.shape[2], *t.shape[3:])
    return t.reshape(n * t.shape[1], *t.shape[2:])


def _unfold(t: Tensor, n: int, seq_dim: bool) -> tuple[Tensor, int | None]:
    if t.numel() == 0 and t.dim() == 1:
        return t, None
    if seq_dim:
        return t.view(t.shape[0], n, t.shape[1] // n, *t.shape[2:]), 1
    return t.view(n, t.shape[0] // n, *t.shape[1:]), 0


def _each_sample(op, info, in_dims, args):
    """The op once per sample (what torch's fallback does): for batched weights."""
    outs = []
    for i in range(info.batch_size):
        outs.append(op(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]))
    return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])


def _layer_fwd_vmap(info, in_dims, gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save):
    args = (gates_x, h0, c0, w_hh, w_hr, lengths, reverse, backend, save)
    if in_dims[3] is not None or in_dims[4] is not None:
        return _each_sample(layer_fwd, info, in_dims, args)
    n, (d_gx, d_h0, d_c0, _, _, d_len) = info.batch_size, in_dims[:6]
    y, h_n, c_n, gates, cells = layer_fwd(_fold(gates_x, d_gx, n, True), _fold(h0, d_h0, n, False),
                                          _fold(c0, d_c0, n, False), w_hh, w_hr, _fold(lengths, d_len, n, False),
                                          reverse, backend, save)
    outs = [_unfold(y, n, True), _unfold(h_n, n, False), _unfold(c_n, n, False), _unfold(gates, n, True),
            _unfold(cells, n, True)]
    return tuple(o for o, _ in outs), tuple(d for _, d in outs)


def _layer_bwd_vmap(info, in_dims, dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse, backend):
    args = (dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse, backend)
    if in_dims[8] is not None or in_dims[9] is not None or w_hr is not None:
        return _each_sample(layer_bwd, info, in_dims, args)
    n = info.batch_size
    seq = (True, False, False, True, True, False, False, True)
    folded = [_fold(a, d, n, s) for a, d, s in zip(args[:8], in_dims[:8], seq)]
    lengths_f = _fold(lengths, in_dims[10], n, False)
    dgates, dh0, dc0, _, dw_hr = layer_bwd(*folded, w_hh, None, lengths_f, reverse, backend)
    # dW_hh = Σ_t,b dz_tᵀ · h_{t-1} per sample (the op's is the sum over all N·B sequences)
    h_prev = reference.previous_hidden(folded[7], folded[5], lengths_f, reverse)
    T, NB, G = dgates.shape
    dw_hh = torch.einsum("tnbg,tnbp->ngp", dgates.view(T, n, NB // n, G), h_prev.view(T, n, NB // n, -1)
                         .to(dgates.dtype)).to(w_hh.dtype)
    outs = [_unfold(dgates, n, True), _unfold(dh0, n, False), _unfold(dc0, n, False), (dw_hh, 0), (dw_hr, None)]
    return tuple(o for o, _ in outs), tuple(d for _, d in outs)


layer_fwd.register_vmap(_layer_fwd_vmap)
layer_bwd.register_vmap(_layer_bwd_vmap)
