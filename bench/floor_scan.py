"""The floor (bench/floor.py) against the number of programs: what the step barrier costs as the grid grows.

The first GPU run (H200, 2026-11-28) measured the floor at 2.8 µs/step for B16 H768 fp16 (96 programs), while
bench/static.py had modeled the barrier near 1 µs: this scan separates the barrier's cost (B = 1, H = 64: almost
no exchange) from the exchange's (B16 H768) as the program count grows, to correct the model's parameters; and
the polled exchange's floor beside it (no barrier: each step's h in a slot of its own, polled), which the LSTM's
forward uses at B16 and which the first run could not separate from the math.

Before the scan, bench/l2_read.py: the L2 read bandwidth the model's exchange term assumes, at B64 H1024's volume.

    python -m bench.floor_scan            GPU: one CSV row per (shape, programs), reports/data/gpu-<gpu>-floor-scan.csv
    python -m bench.floor_scan --dry      CPU plumbing check (interpreter, one program, tiny T); prints only
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

SHAPES = ((1, 64, "fp16"), (16, 768, "fp16"))
PROGRAMS = (2, 8, 32, 64, 96, 132)
EXCHANGES = ("counter", "polled")      # bench/floor.py: the step counter's barrier, or the LSTM's polled slots
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def _row(env, device, B, H, d, exchange, P, steps, ok, t) -> dict:
    return dict(gpu=env.gpu_name() if device.type == "cuda" else "cpu", batch=B, hidden=H, dtype=d, exchange=exchange,
                programs=P, steps=steps, ok=ok, **t.per_step(steps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU: the interpreter, one program, 4 steps")
    ap.add_argument("--steps", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from bench import env
    from bench import floor as fl
    from bench import l2_read
    from bench.timing import measure
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    l2_read.main(["--dry"] if args.dry else [])     # first: seconds, and its own CSV (gpu-<gpu>-l2-read.csv)
    steps, programs = (4, (1,)) if args.dry else (args.steps, PROGRAMS)
    rows = []
    for B, H, d in SHAPES:
        for exchange in EXCHANGES:
            for P in programs:
                if P > H:
                    continue
                if exchange == "counter":
                    h, ref, timed_out = fl.check_floor(B, H, DTYPES[d], device, P)
                    ok = not timed_out and torch.allclose(h.float(), ref.float(), atol=1e-2, rtol=1e-2)
                    h, bar = fl.make_buffers(B, H, steps, DTYPES[d], device)
                    call = lambda: fl.floor_launch(h, bar, P)      # noqa: E731
                else:       # the slots are consumed: each timed call refills them (one memset, ~10 µs at B16 H768)
                    h, ref = fl.check_polled(B, H, device, P)
                    ok = torch.allclose(h.float(), ref.float(), atol=1e-2, rtol=1e-2)
                    h, _ = fl.make_polled_buffers(B, H, steps, device)
                    call = lambda: (fl.refill_polled(h), fl.polled_launch(h, P))      # noqa: E731
                t = measure(call, device)
                rows.append(_row(env, device, B, H, d, exchange, P, steps, ok, t))
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if device.type == "cuda" and rows:
        print("wrote", env.write_gpu_csv("floor-scan", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
