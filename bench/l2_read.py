"""L2 read bandwidth as the h exchange uses it: P programs each read the same block of h, over and over.

The static model (bench/static.py) charges every step's exchange ``grid bytes / L2_BW`` with L2_BW an
assumption (5.5 TB/s). At B64 H1024 bf16 that term alone is 1.67 of the 4.44 µs/step modeled, and it is what
keeps that case over its target (reports/README.md): 64 unit slices each read all of h for their 32 rows, 8 MB
a step. This probe measures the term without the LSTM around it: every program reads the same ROWS x H 16-bit
values (one batch group's h) through L2 (``.cg``: no L1), ITERS times, all of a pass's loads in flight at once
(as the LSTM's pieces of K are), two copies alternating so no pass can be hoisted out of the loop. No barrier,
no math but a sum: µs per pass against P gives the bandwidth, ``bytes_per_pass / us_per_pass``.

    python -m bench.l2_read             GPU: reports/data/gpu-<gpu>-l2-read.csv, a row per program count
    python -m bench.l2_read --dry       CPU plumbing check (interpreter, one program, two passes)

Run by the GPU session's floorscan step (bench/floor_scan.py), before the floor scan.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROWS, H = 32, 1024                  # B64 H1024's batch group: 64 KB of 16-bit h a program reads each step
PROGRAMS = (16, 64, 128, 132)       # 64 = one group's unit slices, 128 = both groups (B64 H1024's grid)
ITERS = 512
BLOCK = 4096                        # elements per load: 8 KB, 8 loads a pass, all issued before the first sum

_kernel = None


def _build():
    """The probe kernel, built on first use (triton is imported after the caller chose the interpreter or not)."""
    global _kernel
    if _kernel is not None:
        return _kernel
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["N"])
    def l2_read_kernel(p_h, p_out, N, S: tl.constexpr, BLOCK: tl.constexpr):
        """Pass n reads copy n % 2 of the S values at p_h (all of it, BLOCK at a time, every load in flight at
        once) and adds them up; the sum is written so nothing is dead code."""
        o = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for n in tl.range(N, num_stages=1):
            p = p_h + (n % 2) * S
            part = tl.zeros([BLOCK], dtype=tl.float32)
            for k in tl.static_range(0, S, BLOCK):
                part += tl.load(p + k + o, cache_modifier=".cg").to(tl.float32)
            acc += part
        tl.store(p_out + tl.program_id(0) * BLOCK + o, acc)

    _kernel = l2_read_kernel
    return _kernel


def launch(h: torch.Tensor, out: torch.Tensor, programs: int, iters: int) -> None:
    """``programs`` programs, each reading both copies in ``h`` ([2, S]) alternately, ``iters`` passes."""
    S = h.shape[1]
    extra = {} if os.environ.get("TRITON_INTERPRET", "0") == "1" else {"num_warps": 8, "num_stages": 1}
    _build()[(programs,)](h, out, iters, S=S, BLOCK=min(BLOCK, S), **extra)


def expected(h: torch.Tensor, iters: int, block: int) -> torch.Tensor:
    """What each program's ``out`` row holds: the sum over passes of its copy, folded to ``block`` lanes."""
    folded = h.float().reshape(2, -1, block).sum(1)                      # [2, BLOCK]
    return folded[0] * ((iters + 1) // 2) + folded[1] * (iters // 2)


def measure_rows(device: torch.device, programs=PROGRAMS, iters: int = ITERS, rows: int = ROWS,
                 hidden: int = H) -> list[dict]:
    from bench import env
    from bench.timing import measure
    S = rows * hidden
    block = min(BLOCK, S)
    h = (torch.rand(2, S, device=device) - 0.5).to(torch.float16)
    out = []
    for P in programs:
        res = torch.empty(P, block, device=device)
        launch(h, res, P, iters)
        ok = torch.allclose(res, expected(h, iters, block).expand(P, block), rtol=1e-3, atol=1e-2)
        t = measure(lambda: launch(h, res, P, iters), device)       # noqa: B023
        us = 1000 * t.p50 / iters
        bytes_per_pass = P * S * 2
        out.append(dict(gpu=env.gpu_name() if device.type == "cuda" else "cpu", rows=rows, hidden=hidden,
                        programs=P, iters=iters, ok=bool(ok), bytes_per_pass=bytes_per_pass,
                        us_per_pass_p50=round(us, 4), us_per_pass_p20=round(1000 * t.p20 / iters, 4),
                        us_per_pass_p80=round(1000 * t.p80 / iters, 4),
                        tb_per_s=round(bytes_per_pass / us / 1e6, 3)))
        print(" ".join(f"{k}={v}" for k, v in out[-1].items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU: the interpreter, one program, two passes, 4 rows")
    args = ap.parse_args(argv)
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    if device.type == "cpu":
        rows = measure_rows(device, programs=(1,), iters=2, rows=4)
    else:
        rows = measure_rows(device)
        from bench import env
        print("wrote", env.write_gpu_csv("l2-read", rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
