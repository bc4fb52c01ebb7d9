"""The reference LSTM recurrence: plain PyTorch, the oracle for every backend.

One layer, one direction. The input projection is done outside (one big GEMM for all steps), so the
recurrence starts from the pre-computed input gates:

    z_t = gates_x[t] + h_{t-1} · W_hhᵀ                      gate order i, f, g, o (PyTorch's)
    i, f, o = σ(z_i), σ(z_f), σ(z_o)        g = tanh(z_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)                     (then h_t = h_t · W_hrᵀ with a projection)

Every backend (Triton, Numba-CUDA) implements exactly this contract, tensor for tensor:

forward(gates_x [T,B,4H], h0 [B,P], c0 [B,H], w_hh [4H,P], w_hr [P,H] | None, lengths [B] int64 | None,
        reverse, save) -> y [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H], cells [T,B,H]

where P = H without projection. ``gates`` holds the activated (i, f, g, o) and ``cells`` the cell
state after every step; both are kept in the accumulation dtype (float64 for float64 inputs, float32
otherwise) because backward needs them exactly. With ``save`` False (inference) a backend may skip
them and return None. All tensors arrive contiguous and on one device.

Variable lengths (packed sequences), as cuDNN does it: sequence b only lives for t < lengths[b].
Past its end its state is frozen (``cells[t]`` repeats the carried state) and its output is zero. With
``reverse`` the sequence is walked from t = lengths[b]-1 down to 0, so h_n is the state after t = 0.

backward(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse)
    -> dgates [T,B,4H] (gradient w.r.t. gates_x, i.e. the pre-activations), dh0, dc0, dw_hr
The weight gradient dW_hh is one GEMM over all steps, done by the caller (see ``weight_grad_hh``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and saved activations are kept in float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def time_steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def previous_hidden(y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """h_{t-1} as seen by step t, for every t: [T,B,P]. Used for dW_hh = Σ_t dz_tᵀ · h_{t-1}.

    Forward direction: h_{t-1} = y[t-1] (h0 at t = 0); steps past a sequence's end get no gradient.
    Reverse direction: h_{t+1} = y[t+1], except at a sequence's first step t = lengths[b]-1, where it
    is h0 (y[t+1] is padding there).
    """
    if reverse:
        h_prev = torch.cat([y[1:], h0[None].to(y.dtype)], 0)
        if lengths is not None:
            T = y.shape[0]
            t = torch.arange(T, device=y.device)[:, None]
            first = (t == (lengths.to(y.device)[None, :] - 1))[..., None]
            h_prev = torch.where(first, h0[None].to(y.dtype), h_prev)
        return h_prev
    return torch.cat([h0[None].to(y.dtype), y[:-1]], 0)


def weight_grad_hh(dgates: Tensor, y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """dW_hh = Σ_t dz_tᵀ · h_{t-1}: one GEMM over all T·B rows."""
    h_prev = previous_hidden(y, h0, lengths, reverse)
    T, B, G = dgates.shape
    return dgates.reshape(T * B, G).t().to(h_prev.dtype) @ h_prev.reshape(T * B, h_prev.shape[-1])   # B = 0 too


def forward(gates_x: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None = None,
            lengths: Tensor | None = None, reverse: bool = False, save: bool = True):
    T, B, G = gates_x.shape
    H = G // 4
    acc = accumulation_dtype(gates_x.dtype)
    W = w_hh.to(acc)
    W_r = None if w_hr is None else w_hr.to(acc)
    h, c = h0.to(acc), c0.to(acc)
    P = h.shape[1]

    y = gates_x.new_zeros(T, B, P, dtype=acc)
    gates = gates_x.new_zeros(T, B, G, dtype=acc)
    cells = gates_x.new_zeros(T, B, H, dtype=acc)
    for t in time_steps(T, reverse):
        z = gates_x[t].to(acc) + h @ W.t()
        i, f, g, o = z.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        if W_r is not None:
            h_new = h_new @ W_r.t()
        if lengths is not None:                       # frozen past the end, zero output
            alive = (t < lengths)[:, None].to(z.device)
            c_new = torch.where(alive, c_new, c)
            y[t] = torch.where(alive, h_new, torch.zeros_like(h_new))
            h_new = torch.where(alive, h_new, h)
        else:
            y[t] = h_new
        h, c = h_new, c_new
        gates[t] = torch.cat([i, f, g, o], 1)
        cells[t] = c
    dt = gates_x.dtype
    return y.to(dt), h.to(dt), c.to(dt), gates, cells


def backward(dy: Tensor, dh_n: Tensor, dc_n: Tensor, gates: Tensor, cells: Tensor, h0: Tensor, c0: Tensor,
             y: Tensor, w_hh: Tensor, w_hr: Tensor | None = None, lengths: Tensor | None = None,
             reverse: bool = False):
    """Backpropagation through time, walking the steps in the opposite order to forward."""
    T, B, G = gates.shape
    acc = gates.dtype
    W = w_hh.to(acc)
    W_r = None if w_hr is None else w_hr.to(acc)
    dh, dc = dh_n.to(acc), dc_n.to(acc)
    dgates = torch.zeros_like(gates)
    dw_hr = None if W_r is None else torch.zeros_like(W_r)
    c_init = c0.to(acc)

    for t in reversed(time_steps(T, reverse)):
        prev = t + 1 if reverse else t - 1
        c_prev = cells[prev] if 0 <= prev < T else c_init
        i, f, g, o = gates[t].chunk(4, 1)
        tanh_c = torch.tanh(cells[t])
        alive = None if lengths is None else (t < lengths)[:, None].to(gates.device)

        dy_t = dy[t].to(acc)
        if alive is not None:
            dy_t = torch.where(alive, dy_t, torch.zeros_like(dy_t))
        dh_t = dh + dy_t
        if W_r is not None:                          # h = r · W_hrᵀ with r = o ⊙ tanh(c)
            r = o * tanh_c
            if alive is not None:
                r = torch.where(alive, r, torch.zeros_like(r))
            dw_hr += dh_t.t() @ r
            dr = dh_t @ W_r
        else:
            dr = dh_t
        d_o = dr * tanh_c
        dc_t = dc + dr * o * (1 - tanh_c * tanh_c)
        d_i, d_f, d_g = dc_t * g, dc_t * c_prev, dc_t * i
        dz = torch.cat([d_i * i * (1 - i), d_f * f * (1 - f), d_g * (1 - g * g), d_o * o * (1 - o)], 1)
        dh_prev, dc_prev = dz @ W, dc_t * f
        if alive is not None:
            dz = torch.where(alive, dz, torch.zeros_like(dz))
            dh_prev = torch.where(alive, dh_prev, dh)
            dc_prev = torch.where(alive, dc_prev, dc)
        dgates[t] = dz
        dh, dc = dh_prev, dc_prev
    return dgates, dh, dc, dw_hr
