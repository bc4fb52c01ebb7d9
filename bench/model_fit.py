"""The static model (bench/static.py) beside the first GPU measurement, and the fit of its one fitted parameter.

    python -m bench.model_fit          reads reports/data/static-h100-measured.csv (modeled) and prints, per measured
                                       case, modeled (issue slots only, CPI = 0), modeled (CPI), measured, and the CPI fit

The model it fits is the model of the code the GPU ran (commit 00d2a57), read with today's profiler: the kernels
have changed since (kernels/README.md), and a fit of today's code to yesterday's times would credit the model
with the change. To rebuild that CSV: ``git worktree add /tmp/wt 00d2a57``, copy today's bench/static.py and
bench/sass.py into it, and run ``python -m bench.static --case ... --csv`` there for the cases below.

MEASURED below: the recurrence alone, µs per step, on the NVIDIA H200 of 2026-11-28 (triton 3.6; the configs of
commit 516f26d). The headline (reports/data/gpu-nvidia-h200-headline.csv) includes the input projection and, for
forward + backward, the weight-gradient GEMMs; those are taken off as the profile measured them
(reports/profile-nvidia-h200.md: input GEMM 120 µs, gradient GEMMs and other kernels 580 µs per 1024 steps at
B16 H768 fp16) or, where no profile ran, as that GEMM's measured rate (644 TFLOP/s) gives them.
The model's other parameters stay assumptions; the floor (bench/floor_scan.py, reports/data/gpu-nvidia-h200-
floor-scan.csv: 1.08 µs a step for a 2-program barrier with almost no exchange) is about what FENCE + 3 · L2 give
(1.00 µs), so the sync's parameters were left as they were.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from . import static

REPO = Path(__file__).resolve().parent.parent
MEASURED_CODE = "static-h100-measured.csv"
# (B, H, dtype, direction in that CSV) -> measured recurrence µs/step, and where it comes from
MEASURED = {
    (16, 768, "float16", "fwd"): (3.11, "profile: _lstm_fwd_kernel 3188 µs / 1024 (training forward)"),
    (1, 256, "float16", "fwd (inference)"): (1.85, "headline 1.86 less the input GEMM (0.5 GFLOP, ~0.01 µs/step)"),
    (64, 1024, "bfloat16", "fwd (inference)"): (4.28, "headline 5.11 less the input GEMM (550 GFLOP at 644 TFLOP/s)"),
    (16, 768, "float16", "bwd"): (4.90, "headline fwd+bwd 8.70 less the training forward 3.11 and 0.69 of GEMMs"),
}


def _modeled(row: dict, cpi: float) -> float:
    latency = int(row["instructions"]) * cpi / (static.PARAMS["CLOCK_GHZ"] * 1e3)
    return float(row["sync_us"]) + float(row["exchange_us"]) + max(float(row["slots_us"]), latency)


def fit(rows: dict) -> float:
    """The CPI (0.1 steps) that minimises the squared relative error over MEASURED."""
    def err(c):
        return sum(((_modeled(rows[k], c) - m) / m) ** 2 for k, (m, _) in MEASURED.items())
    return min((i / 10 for i in range(0, 200)), key=err)


def main() -> int:
    path = REPO / "reports" / "data" / MEASURED_CODE
    with open(path) as f:
        rows = {(int(r["B"]), int(r["H"]), r["dtype"], r["direction"]): r for r in csv.DictReader(f)}
    cpi_now = static.PARAMS["CPI"]
    c = fit(rows)
    print(f"fitted CPI = {c:g} (bench/static.py uses {cpi_now:g})")
    print("| case | measured µs/step (recurrence) | modeled, issue slots only | modeled with CPI | error |")
    print("|---|---|---|---|---|")
    for k, (m, source) in MEASURED.items():
        old, new = _modeled(rows[k], 0), _modeled(rows[k], cpi_now)
        print(f"| B{k[0]} H{k[1]} {k[2]} {k[3]} | {m:.2f} ({source}) | {old:.2f} | {new:.2f} | {100 * (new / m - 1):+.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
