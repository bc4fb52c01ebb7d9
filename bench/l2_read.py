"""L2 read bandwidth as the h exchange uses it: P programs each read the same block of h, over and over.

The static model (bench/static.py) charges every step's exchange ``grid bytes / L2_BW`` with L2_BW an
assumption (5.5 TB/s). At B64 H1024 bf16 that term alone is 1.67 of the 4.44 µs/step modeled, and it is what
keeps that case over its target (reports/README.md): 64 unit slices each read all of h for their 32 rows, 8 MB
a step. This probe measures the term without the LSTM around it: every program reads ROWS x H 16-bit values
(its batch group's h; 64 programs a group, as the LSTM's) through L2 (``.cg``: no L1), ITERS times, all of a pass's loads in flight at once
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
GROUP_PROGRAMS = 64                 # programs that read the same rows (a batch group's unit slices)
ITERS = 512
BLOCK = 4096                        # elements per load: 8 KB, 8 loads a pass, all issued before the first sum
                                    # (sm_90, triton 3.6, 8 warps: 16 LDG.E.128.STRONG.GPU back to back, 64 registers)

_kernel = None


def _build():
    """The probe kernel, built on first use (triton is imported after the caller chose the interpreter or not)."""
    global _kernel
    if _kernel is not None:
        return _kernel
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["N"])
    def l2_read_kernel(p_h, p_out, N, G, S: tl.constexpr, BLOCK: tl.constexpr):
        """Pass n of program i reads copy n % 2 of its group's S values (group i % G: G batch groups, each its
        own rows of h), all of it, BLOCK at a time, every load in flight at once, and adds them up; the sum is
        written so nothing is dead code."""
        o = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        g = tl.program_id(0) % G
        for n in tl.range(N, num_stages=1):
            p = p_h + ((n % 2) * G + g).to(tl.int64) * S
            part = tl.zeros([BLOCK], dtype=tl.float32)
            for k in tl.static_range(0, S, BLOCK):
                part += tl.load(p + k + o, cache_modifier=".cg").to(tl.float32)
            acc += part
        tl.store(p_out + tl.program_id(0) * BLOCK + o, acc)

    _kernel = l2_read_kernel
    return _kernel


def launch(h: torch.Tensor, out: torch.Tensor, programs: int, iters: int) -> None:
    """``programs`` programs over ``h`` ([2, G, S]: two copies of G groups' values), program i reading group i % G,
    the copies alternately, ``iters`` passes; ``out`` [programs, BLOCK]."""
    _, G, S = h.shape
    extra = {} if os.environ.get("TRITON_INTERPRET", "0") == "1" else {"num_warps": 8, "num_stages": 1}
    _build()[(programs,)](h, out, iters, G, S=S, BLOCK=min(BLOCK, S), **extra)


def expected(h: torch.Tensor, programs: int, iters: int, block: int) -> torch.Tensor:
    """What ``out`` holds, [programs, block]: each program's sum over passes of its group's copies, folded to
    ``block`` lanes."""
    G = h.shape[1]
    folded = h.float().reshape(2, G, -1, block).sum(2)                  # [2, G, BLOCK]
    per_group = folded[0] * ((iters + 1) // 2) + folded[1] * (iters // 2)
    return per_group[torch.arange(programs) % G]


def measure_rows(device: torch.device, programs=PROGRAMS, iters: int = ITERS, rows: int = ROWS,
                 hidden: int = H) -> list[dict]:
    from bench import env
    from bench.timing import measure
    S = rows * hidden
    block = min(BLOCK, S)
    out = []
    for P in programs:
        G = max(1, P // GROUP_PROGRAMS)         # 128 programs: B64 H1024's two groups, each reading its own rows
        h = (torch.rand(2, G, S, device=device) - 0.5).to(torch.float16)
        res = torch.empty(P, block, device=device)
        launch(h, res, P, iters)
        ok = torch.allclose(res, expected(h, P, iters, block).to(device), rtol=1e-3, atol=1e-2)
        t = measure(lambda: launch(h, res, P, iters), device)       # noqa: B023
        us = 1000 * t.p50 / iters
        bytes_per_pass = P * S * 2
        out.append(dict(gpu=env.gpu_name() if device.type == "cuda" else "cpu", rows=rows, hidden=hidden,
                        programs=P, groups=G, iters=iters, ok=bool(ok), bytes_per_pass=bytes_per_pass,
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
