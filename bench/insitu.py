"""``python -m bench.insitu``: what the step synchronisation costs inside the LSTM kernels, on a GPU.

The first GPU run (H200, 2026-11-28) measured B16 H768 fp16 forward at 3.11 µs a step (the recurrence; cuDNN's
persistent kernel, on the same 48-CTA split, 1.93) and the floor kernel, a barrier with the same h read and no
math, at 2.1-2.8: the sync and exchange look like most of the step, yet polling h instead of counting steps
gained 0.06 µs. Which it is, this measures: each headline kernel on its step-counter config, timed as it runs
and again launched with ``triton_lstm.STEP_SYNC`` off (NUM_PROGRAMS = 1: no program waits for the others; the
results are wrong and not used). The difference is what waiting at the step counter costs in the kernel (the
arrival, the fence, the poll, and the wait for the slowest program); what is left is the math and the loads.

    python -m bench.insitu          GPU: reports/data/gpu-<gpu>-insitu.csv, one row per (case, sync on / off)
    python -m bench.insitu --dry    CPU plumbing check: the interpreter, tiny shapes, nothing written
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

# (batch, hidden, dtype, kernel): the headline's forward and backward at B16 H768 fp16, B64 H1024 bf16 and
# B1 H256 fp16
CASES = ((16, 768, "float16", "fwd"), (16, 768, "float16", "bwd"), (64, 1024, "bfloat16", "fwd"),
         (1, 256, "float16", "fwd"))
DRY_CASES = ((2, 8, "float32", "fwd"), (2, 8, "float32", "bwd"))


def counter_config(B: int, H: int, dtype: torch.dtype, backward: bool, device):
    """The config the launcher would choose, with the h / dz exchange through the step counter (POLLED_H off)."""
    from lstm_gpu.kernels import triton_config
    saved = triton_config.POLLED_H
    triton_config.POLLED_H = False
    try:
        return triton_config.choose_config(B=B, H=H, dtype=dtype, device=device, backward=backward)
    finally:
        triton_config.POLLED_H = saved


def kernel_call(B: int, H: int, T: int, dtype: torch.dtype, kernel: str, device):
    """(config, call): ``call()`` launches that kernel once (an inference forward, or a backward of a saved
    training forward) on random inputs, on the step-counter config."""
    from lstm_gpu.kernels import triton_lstm
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g, device=device) * 0.3).to(dtype)     # noqa: E731
    gx, h0, c0, w = r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H)
    fwd = counter_config(B, H, dtype, False, device)
    if kernel == "fwd":
        return fwd, lambda: triton_lstm.lstm_fwd(gx, h0, c0, w, None, False, False, config=fwd)
    _, h_n, c_n, gates, cells = triton_lstm.lstm_fwd(gx, h0, c0, w, None, False, True, config=fwd)
    bwd = counter_config(B, H, dtype, True, device)
    dy = r(T, B, H)
    return bwd, lambda: triton_lstm.lstm_bwd(dy, h_n, c_n, gates, cells, c0, w, None, False, config=bwd)


def run(cases, steps: int, device, out=print) -> list[dict]:
    from lstm_gpu.kernels import triton_lstm
    from bench import env
    from bench.timing import measure
    gpu = env.gpu_name() if device.type == "cuda" else "cpu"
    rows = []
    for B, H, d, kernel in cases:
        cfg, call = kernel_call(B, H, steps, getattr(torch, d), kernel, device)
        for sync in (True, False):
            triton_lstm.STEP_SYNC = sync
            try:
                t = measure(call, device)
            finally:
                triton_lstm.STEP_SYNC = True
            rows.append(dict(gpu=gpu, batch=B, hidden=H, dtype=d, kernel=kernel, programs=cfg.num_programs,
                             warps=cfg.num_warps, sync="on" if sync else "off", steps=steps, **t.per_step(steps)))
            out(" ".join(f"{k}={v}" for k, v in rows[-1].items()))
        on, off = rows[-2]["us_per_step_p50"], rows[-1]["us_per_step_p50"]
        out(f"B{B} H{H} {d} {kernel}: {on} µs/step with the step counter, {off} without: the wait costs "
            f"{on - off:.3f} µs/step")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU: the interpreter, one program, tiny shapes")
    ap.add_argument("--steps", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    rows = run(DRY_CASES if args.dry else CASES, 4 if args.dry else args.steps, device)
    if device.type == "cuda" and rows:
        from bench import env
        print("wrote", env.write_gpu_csv("insitu", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
