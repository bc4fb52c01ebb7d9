"""Static profiler: what one time step of the Triton LSTM costs, read from the sm_90 code that launches.

    python -m bench.static                          # the headline cases, a table on stdout
    python -m bench.static --case 16,768,1024,float16,fwd+bwd --csv reports/data/static-h100.csv

MODELED FROM sm_90 CODE, NOT MEASURED. Supports: triton 3.6 / 3.9 on a CPU machine (no GPU needed).
Tested on: tests/test_static.py (parsing, the model's arithmetic, and that a broken synchronisation or a
long MMA chain shows). Known risks: every latency below is an assumption until a GPU measures it; the
model is a sum of serial latencies and issue slots, it ignores overlap between warps beyond that and
contention in L2; shared-memory wavefronts are counted from the access width (lanes sharing an address cost
less, bank conflicts more: the fp32 FMA path's LDS are partly broadcasts, so its figure is an upper bound); it
must be corrected to the first measurement, never the measurement to it.

For a case (B, H, T, dtype, fwd | fwd+bwd) it compiles exactly the kernels and configs the dispatcher
launches on a 132-SM H100 (``kernels/triton_sm90.py``: the real launcher, Triton's run-time
specialisation), finds the time loop in the SASS (``bench/sass.py``) and reports per step: instructions
by class, the longest chain of dependent MMAs, bytes per program and for the grid, the serial L2 round
trips of the step synchronisation, registers / spills / shared memory, programs. Then the model:

    sync     = fences · FENCE + round_trips · L2        (read from the synchronisation's own code)
    exchange = tiles · Σ rounds (L2 or DRAM) + grid bytes / L2_BW
                 (the serial rounds of loads the step waits for, ``sass.load_phases``: a load issued after
                  the wait for an earlier one is a round of its own; the exchange of h or dz is an L2
                  round; unprefetched streamed data a DRAM one; bytes from ``step_bytes``)
    compute  = max(instructions · ceil(warps / 4) / ISSUE, instructions · CPI, mma_chain · MMA,
                   MMA work · ceil(warps / 4) · MMA_ISSUE, shared-memory wavefronts · warps / SMEM)
                 (CPI: a warp's dependent stream, the one parameter fitted to a GPU measurement so far)
                 (the last: a tl.dot operand staged in shared memory, W_hh included, is read back with
                  ldmatrix every step; every warp reads its own copy of the operand the warps share)
    step     = sync + exchange + compute                (cycles; µs = cycles / CLOCK)
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch

# The model's parameters: assumptions (DESIGN facts in reports/README.md), printed with every report.
PARAMS = dict(
    CLOCK_GHZ=1.8,        # H100 SXM sustained SM clock
    ISSUE=1.0,            # warp instructions issued per cycle per SM sub-partition (4 per SM)
    L2=450,               # cycles: an L2 hit on a line another SM just wrote (300-500 assumed)
    DRAM=700,             # cycles: a load of streamed data (gates_x, saved activations, dy) from DRAM
    MMA=33,               # cycles: a dependent HMMA.16816 waiting on the previous accumulator
    MMA_ISSUE=4,          # cycles per HMMA.16816 (or .1688 tf32) per SM sub-partition at the tensor cores' dense
                          # peak (989 TFLOPS fp16 = 132 SMs x 4 x 512 FMA per cycle at 1.83 GHz); mma.sync may
                          # reach less on Hopper, so this is a floor
    SMEM=1,               # 128-byte shared-memory wavefronts per cycle per SM: 32 banks x 4 B (published for the
                          # full GH100: 32.3 TB/s = 144 SMs x 128 B x 1.755 GHz); bank conflicts not modeled
    FENCE=450,            # cycles: MEMBAR.GPU waits for the program's outstanding stores to reach L2
    L1=35,                # cycles: an L1 hit, e.g. a reload of a value ptxas kept in local memory
    L2_BW=5.5e12,         # bytes/s: L2 bandwidth of the whole chip (assumed; bench/l2_read.py measures it, in the GPU
                          # session's floorscan step)
    CPI=5.7,              # cycles per instruction of one warp's dependent stream: FITTED to the first GPU measurement
                          # (H200, 2026-11-28; bench/model_fit.py: four recurrences, residuals -31 % to +12 %). Without
                          # it (issue slots only) the model had B16 H768 fp16 at 1.21 µs/step, measured 3.11
)
N_SM = 132
HEADLINE = [
    (16, 768, 1024, "float16", "fwd"),
    (16, 768, 1024, "float16", "fwd+bwd"),
    (64, 1024, 1024, "bfloat16", "fwd"),
    (1, 256, 1024, "float16", "fwd"),
    (16, 1024, 1024, "bfloat16", "fwd"),
    (16, 1536, 1024, "bfloat16", "fwd+bwd"),     # the largest H whose W_hh stays on chip (K as 1024 + 512)
    (16, 512, 1024, "float32", "fwd+bwd"),       # fp32-ieee on CUDA cores: tl.dot in IEEE fp32 (FMAs)
    (64, 1024, 1024, "tf32", "fwd"),             # fp32 on the tensor cores, 8 units a program (16 do not fit)
]


@dataclass
class Row:
    B: int
    H: int
    T: int
    dtype: str
    direction: str
    programs: int
    warps: int
    regs: int
    spill_bytes: int
    loop_spills: int
    shared_bytes: int
    instructions: int
    mma: int
    fma: int
    mufu: int
    shfl: int
    ldg: int
    stg: int
    atom: int
    bar: int
    fence: int
    mma_chain: int
    bytes_per_program: int
    grid_bytes: int
    smem_bytes: int             # shared-memory bytes one program moves per step (wavefronts x 128, all warps)
    sync_round_trips: int
    sync_fences: int
    tiles: int
    sync_us: float
    exchange_us: float
    compute_us: float
    step_us: float
    slots_us: float = 0.0       # compute without the CPI bound (issue slots, MMA, shared memory): bench/model_fit.py
    triton: str = ""


def step_bytes(direction: str, *, B: int, H: int, dtype: torch.dtype, programs: int, save: bool = True,
               low_exchange: bool = False) -> int:
    """Bytes one step moves through L2, the whole grid (what the algorithm needs, masked lanes excluded).
    ``programs``: programs per batch group (each reads h of its group's rows). Forward, every program
    reads all of h_{t-1} for its rows and its gates_x, writes its h_t (and, to save for backward,
    the activated gates and c in fp32); h is written twice (y, and the exchange slot the others read, in the
    dtype of h on either exchange). Backward, every program reads all of dz_t (16-bit when
    exchanged so), its saved gates, c_t, c_{t-1} and dy, and writes its dz."""
    x = torch.finfo(dtype).bits // 8
    acc = 8 if dtype == torch.float64 else 4
    if direction == "fwd":
        return programs * B * H * x + B * 4 * H * x + B * H * 2 * x + (B * 5 * H * acc if save else 0)
    z = 2 if low_exchange else acc
    return (programs * B * 4 * H * z + B * 4 * H * acc + 2 * B * H * acc + B * H * x
            + B * 4 * H * acc + (B * 4 * H * z if low_exchange else 0))


def _triton_version() -> str:
    import triton
    return triton.__version__


def model(step, *, warps: int, programs: int, grid_bytes: int, params: dict = PARAMS) -> dict:
    """The latency model (see the module docstring): µs per step and its parts."""
    p = params
    grid = grid_bytes
    per_program = grid // programs
    sync = step.fences * p["FENCE"] + step.sync_round_trips * p["L2"]
    rounds = sum(p["DRAM"] if kind == "dram" else p["L2"] for kind in step.load_phases)
    exchange = step.tile_trips * rounds + grid / p["L2_BW"] * p["CLOCK_GHZ"] * 1e9
    issue = step.instructions * math.ceil(warps / 4) / p["ISSUE"]
    tensor = step.mma_units * math.ceil(warps / 4) * p["MMA_ISSUE"]
    smem = step.smem_wavefronts * warps / p["SMEM"]
    slots = max(issue, step.mma_chain * step.tile_trips * p["MMA"], tensor, smem)
    compute = max(slots, step.instructions * p["CPI"])   # one warp's stream: 1-2 warps per sub-partition hide little
    us = lambda cycles: cycles / (p["CLOCK_GHZ"] * 1e3)   # noqa: E731
    return dict(bytes_per_program=per_program, grid_bytes=grid, sync_us=us(sync), exchange_us=us(exchange),
                compute_us=us(compute), step_us=us(sync + exchange + compute), slots_us=us(slots))


def torch_dtype(name: str) -> torch.dtype:
    """A case's dtype: a torch dtype's name, or "tf32" (float32 on the tensor cores, as cuDNN runs it by default)."""
    return torch.float32 if name == "tf32" else getattr(torch, name)


@contextlib.contextmanager
def _precision(name: str):
    """The configs of dtype ``name``: fp32 matmul precision tf32 for "tf32", else the default (ieee)."""
    from lstm_gpu.kernels import triton_config
    saved = triton_config.FP32_PRECISION
    triton_config.FP32_PRECISION = "tf32" if name == "tf32" else saved
    try:
        yield
    finally:
        triton_config.FP32_PRECISION = saved


def profile(B: int, H: int, T: int, dtype: str, direction: str, n_sm: int = N_SM, save: bool = True) -> Row:
    """Compile what the dispatcher launches for one direction of a case and model its step. ``save``:
    whether the forward saves gates and cells for backward (training); an inference forward does not."""
    from lstm_gpu.kernels import triton_sm90
    from lstm_gpu.kernels.triton_config import gpu_config

    from . import sass
    dt = torch_dtype(dtype)
    with _precision(dtype):
        cfg = gpu_config(B=B, H=H, dtype=dt, n_sm=n_sm, backward=direction == "bwd")
    extra = dict(save=save) if direction == "fwd" else {}
    launch = triton_sm90.capture(direction, B=B, H=H, T=T, dtype=dt, cfg=cfg, **extra)
    kernel = triton_sm90.compile_launch(launch)
    usage = triton_sm90.resource_usage(kernel)
    tiles = -(-cfg.rows_per_group(B) // cfg.block_b)        # batch tiles each program walks per step
    step = sass.read_step(sass.parse(triton_sm90.sass(kernel)), inner_trips=tiles)
    c = step.counts
    grid = step_bytes(direction, B=B, H=H, dtype=dt, programs=cfg.num_programs // cfg.batch_groups, save=save,
                      low_exchange=cfg.low_exchange(dt))
    m = model(step, warps=cfg.num_warps, programs=cfg.num_programs, grid_bytes=grid)
    return Row(B=B, H=H, T=T, dtype=dtype, direction=direction if save or direction != "fwd" else "fwd (inference)",
               programs=cfg.num_programs, warps=cfg.num_warps,
               regs=usage["REG"], spill_bytes=usage["STACK"] + usage["LOCAL"], loop_spills=c.get("local", 0),
               shared_bytes=max(usage["SHARED"], kernel.metadata.shared), instructions=step.instructions,
               mma=c.get("mma", 0), fma=c.get("fma", 0), mufu=c.get("mufu", 0), shfl=c.get("shfl", 0),
               ldg=c.get("ldg", 0), stg=c.get("stg", 0), atom=c.get("atom", 0), bar=c.get("bar", 0),
               fence=c.get("fence", 0), triton=_triton_version(),
               smem_bytes=round(step.smem_wavefronts * cfg.num_warps * 128), mma_chain=step.mma_chain * step.tile_trips, sync_round_trips=step.sync_round_trips,
               sync_fences=step.fences, tiles=step.tile_trips, **m)


_CACHE: dict = {}


def case_rows(B, H, T, dtype, mode) -> list[Row]:
    """The rows of one case, as the benchmark runs it: "fwd" is an inference forward (nothing saved);
    "fwd+bwd" a training forward (gates and cells saved) and the backward."""
    kernels = [("fwd", False)] if mode == "fwd" else [("fwd", True), ("bwd", True)]
    for d, save in kernels:
        if (B, H, T, dtype, d, save) not in _CACHE:
            _CACHE[B, H, T, dtype, d, save] = profile(B, H, T, dtype, d, save=save)
    return [_CACHE[B, H, T, dtype, d, save] for d, save in kernels]


def markdown(cases: list[tuple], rows_of: dict) -> str:
    """One line per kernel of each case; a fwd+bwd case adds the line of their sum."""
    head = ("| case (B, H, T, dtype) | kernel | programs × warps | regs / stack B / spills in loop / smem KB | instr / step / warp | "
            "HMMA / chain | shfl | L2 bytes / step | smem KB / step / SM | sync trips + fences | modeled µs/step: sync + exchange + compute |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case in cases:
        B, H, T, dtype, mode = case
        rows = rows_of[case]
        for r in rows:
            lines.append(
                f"| {B}, {H}, {T}, {dtype} | {r.direction} | {r.programs} × {r.warps} | "
                f"{r.regs} / {r.spill_bytes} / {r.loop_spills} / {r.shared_bytes // 1024} | {r.instructions} | "
                f"{r.mma} / {r.mma_chain} | "
                f"{r.shfl} | {r.grid_bytes / 1e6:.2f} MB | {r.smem_bytes // 1024} | {r.sync_round_trips} + {r.sync_fences} | "
                f"**{r.step_us:.2f}** = {r.sync_us:.2f} + {r.exchange_us:.2f} + {r.compute_us:.2f} |")
        if mode == "fwd+bwd":
            lines.append(f"| {B}, {H}, {T}, {dtype} | fwd+bwd | | | | | | | | | **{sum(r.step_us for r in rows):.2f}** |")
    return "\n".join(lines)


def params_line(params: dict = PARAMS) -> str:
    return ("model parameters (assumed, not measured; CPI fitted to the H200 measurement): "
            + ", ".join(f"{k}={v:g}" for k, v in params.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", metavar="B,H,T,DTYPE,MODE",
                    help="a case, e.g. 16,768,1024,float16,fwd+bwd (repeatable; default: the headline cases)")
    ap.add_argument("--csv", help="write the rows to this CSV (e.g. reports/data/static-h100.csv)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        ap.error("unset TRITON_INTERPRET: the sm_90 compile needs the real Triton compiler")
    cases = []
    for text in args.case or []:
        try:
            b, h, t, dtype, mode = text.split(",")
            cases.append((int(b), int(h), int(t), dtype, mode))
        except ValueError:
            ap.error(f"--case wants B,H,T,DTYPE,MODE (e.g. 16,768,1024,float16,fwd), got {text!r}")
        if mode not in ("fwd", "fwd+bwd") or not (dtype == "tf32" or isinstance(getattr(torch, dtype, None), torch.dtype)):
            ap.error(f"--case {text!r}: MODE is fwd or fwd+bwd, DTYPE a torch dtype name (float16, bfloat16, ...) "
                     "or tf32")
    cases = cases or HEADLINE
    rows_of = {case: case_rows(*case) for case in cases}
    rows = list({id(r): r for case in cases for r in rows_of[case]}.values())
    print(f"MODELED FROM sm_90 CODE, NOT MEASURED (132-SM H100 configs, triton {_triton_version()}; the GPU "
          "machine runs 3.6: PYTHONPATH=.triton36 reads what it launches)")
    print(params_line())
    print(markdown(cases, rows_of))
    if args.csv:
        os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])) + ["source"])
            w.writeheader()
            for r in rows:
                w.writerow(dict(asdict(r), source="modeled from sm_90 code, not measured"))
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
