"""The correctness gate: a provider is timed only after its outputs (and, for fwd+bwd, its gradients)
match the lstm_gpu reference recurrence at a tolerance set by the dtype.

Error measure, per tensor: max|got - ref| / (atol + rtol * max|ref|). The tensor-wide scale (max|ref|)
keeps weight gradients, which are sums over T*B rows, from failing on their size alone. A tensor passes
at <= 1; the worst ratio over all tensors is recorded in the CSV (metric ``gate_error``), so the margin
is visible for every row, passing or not. A provider above 1 is recorded "incorrect" and gets no time.

The oracle is the reference backend run on the very same (dtype-rounded) weights and input, upcast:
float64 on CPU, float32 with IEEE matmuls on GPU (float64 would double the memory of the largest shapes).
Tolerances (atol, rtol), chosen to pass torch's own LSTM (cuDNN / ATen) with margin:
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOLERANCES = {
    "fp32-ieee": (1e-5, 2e-4),   # fp32 end to end; errors grow with T and with the T*B-row gradient sums
    "fp32-tf32": (1e-3, 2e-2),   # 10-bit mantissa inputs to every matmul
    "fp16": (1e-3, 2e-2),        # outputs and weights rounded to fp16 (2^-11), fp32 accumulation
    "bf16": (1e-2, 8e-2),        # 2^-8 rounding of h for every step's matmul; errors compound over T
}


@dataclass
class GateResult:
    ok: bool
    ratio: float          # worst error / tolerance over all tensors (<= 1 passes)
    worst: str            # name of the worst tensor
    abs_err: float        # its max abs error
    detail: str           # human-readable summary

    @property
    def note(self) -> str:
        return self.detail


def compare(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], dtype_name: str) -> GateResult:
    """Compare every tensor in ``ref`` against ``got`` (missing or mis-shaped tensors fail the gate)."""
    atol, rtol = TOLERANCES[dtype_name]
    worst, worst_ratio, worst_abs = "", 0.0, 0.0
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            return GateResult(False, math.inf, name, math.inf, f"{name}: missing (no gradient?)")
        if tuple(g.shape) != tuple(r.shape):
            return GateResult(False, math.inf, name, math.inf,
                              f"{name}: shape {tuple(g.shape)} != reference {tuple(r.shape)}")
        r64, g64 = r.detach().double(), g.detach().double().to(r.device)
        if not torch.isfinite(g64).all():
            return GateResult(False, math.inf, name, math.inf, f"{name}: non-finite values")
        err = (g64 - r64).abs().max().item() if r64.numel() else 0.0
        scale = r64.abs().max().item() if r64.numel() else 0.0
        ratio = err / (atol + rtol * scale)
        if ratio >= worst_ratio:
            worst, worst_ratio, worst_abs = name, ratio, err
    ok = worst_ratio <= 1.0
    detail = (f"gate {'passed' if ok else 'FAILED'}: worst {worst} max|err|={worst_abs:.3g} "
              f"= {worst_ratio:.3g} x tol (atol={atol:g}, rtol={rtol:g} x max|ref|)")
    return GateResult(ok, worst_ratio, worst, worst_abs, detail)
