"""Static model of the one-launch LSTM stack (kernels/triton_stack.py) against today's per-layer launches.

    PYTHONPATH=.triton36 python -m bench.static_stack [--csv reports/data/static-stack-h100.csv]

MODELED FROM sm_90 CODE, NOT MEASURED. Supports: triton 3.6 (the GPU machine's version, via PYTHONPATH=.triton36)
and 3.9 on a CPU machine. Tested on: tests/test_stack.py (the ratios of the modeled cases, with the CSV).
Known risks: the model is bench/static.py's (its assumed latencies, its sum of serial rounds and issue slots);
a wavefront step is modeled as the step of its slowest layer (layers ≥ 1, which also compute x·W_ihᵀ), with the
layers of one step running at the same time and only their L2 bytes adding up; the per-layer baseline leaves out
the input GEMM between layers and the launch gaps, which only flatters the baseline.

For a stack (B, H, T, dtype, L, uni- or bidirectional) it compiles exactly what the stack launcher launches on a
132-SM H100 (the real launcher called on meta tensors, Triton's run-time specialisation: kernels/triton_sm90.py),
reads the forward's time loop in the SASS (bench/sass.py), models one step with bench/static.py's model and
multiplies by the steps of the schedule:

    unidirectional   T + L - 1 steps (the wavefront: layer l runs step t - l), or, with a projection group per
                     layer ≥ 1 (where the SMs allow), T + 2(L-1) steps of the slower of a layer's step and a
                     projection step, all groups' L2 bytes adding up
    bidirectional    L·T steps (both directions of a layer side by side, the layers one after another); a layer
                     ≥ 1 projects its input (x_t·W_ihᵀ) while the layer below runs: program pairs a half row
                     each beside every step of it (or, an odd number of programs, two rows each beside its
                     last T - T//2 steps), so each of those steps costs max(the step with the projection's L2
                     bytes added, a projection iteration)
    per layer today  L·D·T steps of the single-layer kernel (bench/static.py's inference forward row), one
                     direction after the other

A value ptxas kept in local memory and reloads inside the projection loop (the bidirectional forward's, polled:
2 at H = 512; tests/test_triton_sm90.py bounds them, and no store) is charged as a serial L1 hit (``L1``) per
iteration; the time loops have none (tested).

The loop of the stack kernel is [wait][load h, x][compute][store][arrive][prefetch], so its serial load rounds
are read between the poll loop's end and the arrival (after the wait) and before the poll (anything consumed
there waits before the wait), not around the arrival as for the single-layer loop. A round issued and consumed
after the arrival (the next step's gates_x) runs during the synchronisation's poll round trip: only what it
takes beyond an L2 round trip counts.

Training adds the forward that saves gates and cells and the backward (``backward_us``), modeled the same way
with the backward's schedule (the same step counts, the projection of dy in the forward's place), against
L·D·T steps of the single-layer forward and backward (bench/static.py's fwd+bwd rows).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import asdict, dataclass

import torch

from . import sass, static

CASES = [(16, 512, 1024, "float16", 2, False), (16, 512, 1024, "float16", 2, True)]
TARGET = 0.6        # issue 16: each modeled stack ≤ 0.6x today's per-layer launches


@dataclass
class StackRow:
    B: int
    H: int
    T: int
    dtype: str
    layers: int
    directions: int
    programs: int
    warps: int
    fwd_regs: int
    fwd_spill_bytes: int
    fwd_loop_spills: int
    fwd_shared_bytes: int
    bwd_regs: int
    bwd_spill_bytes: int
    bwd_loop_spills: int
    bwd_shared_bytes: int
    instructions: int
    mma: int
    mma_chain: int
    sync_round_trips: int
    load_phases: str
    grid_bytes: int
    step_us: float
    projection_us: float        # bidirectional: one iteration of a layer ≥ 1's input projection (0: none)
    projection_bytes: int       # its L2 bytes, all programs of the layer
    steps: int
    stack_us: float
    per_layer_step_us: float
    per_layer_steps: int
    per_layer_us: float
    ratio: float
    bwd_step_us: float = 0.0        # training: the backward's step (one poll: its own group and its dy's projection)
    train_stack_us: float = 0.0     # training forward (gates and cells saved) + backward
    train_per_layer_us: float = 0.0
    train_ratio: float = 0.0
    fwd_projection_reloads: int = 0     # local-memory loads in the forward's projection loop (no stores: tested)
    triton: str = ""
    source: str = "modeled from sm_90 code, not measured"


def capture(direction: str, *, B: int, H: int, T: int, L: int, D: int, dtype: torch.dtype, save: bool = False,
            n_sm: int = static.N_SM):
    """The stack launcher's launch for a case, recorded on meta tensors: (config, triton_sm90.Launch)."""
    from lstm_gpu.kernels import triton_sm90, triton_stack
    from lstm_gpu.kernels.triton_stack_config import gpu_config
    cfg = gpu_config(B=B, H=H, L=L, D=D, dtype=dtype, n_sm=n_sm)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    e = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device=triton_sm90.META)   # noqa: E731
    name = "_stack_fwd_kernel" if direction == "fwd" else "_stack_bwd_kernel"
    real, sink = getattr(triton_stack, name), []
    setattr(triton_stack, name, triton_sm90._Recorder(real, sink))
    try:
        w_ih, w_hh, state = e(L - 1, D, 4 * H, D * H), e(L, D, 4 * H, H), e(L * D, B, H)
        if direction == "fwd":
            triton_stack.stack_fwd(e(T, B, D * 4 * H), w_ih, w_hh, e(L - 1, D, 4 * H), state, state, None,
                                   save=save, config=cfg)
        else:
            triton_stack.stack_bwd(e(T, B, D * H), state, state, e(L, T, B, D * 4 * H, dt=acc), e(L, T, B, D * H, dt=acc),
                                   state, w_ih, w_hh, None, config=cfg)
    finally:
        setattr(triton_stack, name, real)
    (launch,) = sink
    return cfg, launch


def outer_loops(code: list) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(the time loop, the input projection's loop or None): the time loop is the last outermost loop that
    stores; the projection's (layers ≥ 1: bidirectional before their loop, unidirectional in a group of its
    own) an earlier outermost loop that stores and polls (a counter, or the data: volatile loads), not a lone
    wait."""
    outer = [(a, b) for a, b in sass.loops(code) if not any(c <= a and b <= d and (c, d) != (a, b)
                                                          for c, d in sass.loops(code))]
    has = lambda lo, hi, test: any(test(i) for i in code if lo <= i.addr <= hi)   # noqa: E731
    stores = [lp for lp in outer if has(*lp, lambda i: i.op == "STG")]
    main = max(stores)
    pre = [lp for lp in stores if lp < main and has(*lp, lambda i: i.op == "ATOMG" or sass._is_data_poll(i))]
    return main, (pre[-1] if pre else None)


def read_step(code: list, loop: tuple[int, int] | None = None) -> sass.Step:
    """bench/sass.py's reading of a loop (default: the time loop), with the load rounds placed for the stack's
    loop shape (see the module docstring)."""
    lo, hi = loop or outer_loops(code)[0]
    step = sass.read_step(code, loop=(lo, hi))
    body = [i for i in code if lo <= i.addr <= hi]
    polls = [(a, b) for a, b in sass.loops(body) if (a, b) != (lo, hi)
             and any(i.op == "ATOMG" for i in body if a <= i.addr <= b)]
    if not polls:       # polled: its polls read as the single layer's (an arrival left is once a launch)
        return step
    if len(polls) != 1:
        raise ValueError(f"expected one poll loop in the stack's time loop, found {len(polls)}")
    arrival = [i.addr for i in body if i.op == "REDG"]
    if arrival:                                     # the time loop: rounds after the arrival overlap the poll
        body = [i for i in body if i.addr <= arrival[0]]
    step.load_phases = sass.load_phases(body, polls[0][0], polls[0][1])
    return step


def exposed_after_arrival(code: list, loop: tuple[int, int]) -> float:
    """µs of the rounds of loads a step issues and waits for after its arrival, beyond the L2 round trip of the
    poll they run beside. The time loop's are the next step's gates_x, taken as DRAM whatever their cache
    modifier: layer 0's come from the GEMM outside (too many bytes to stay in L2), a bidirectional layer ≥ 1's
    were projected long before; only a projection group's, one step old, would be L2 hits, and layer 0 sets
    the pace."""
    lo, hi = loop
    arrivals = [i.addr for i in code if lo <= i.addr <= hi and i.op == "REDG"]
    # polled (no arrival): what the step issues after its last store, consumed at the next step's poll
    arrival = min(arrivals) if arrivals else max(i.addr for i in code if lo <= i.addr <= hi and i.op == "STG")
    tail = [i for i in code if arrival < i.addr <= hi]
    p = static.PARAMS
    rounds = len(sass.load_phases(tail, hi + 1, hi + 1)) if tail else 0
    return rounds * max(0, p["DRAM"] - p["L2"]) / (p["CLOCK_GHZ"] * 1e3)


def step_bytes(*, B: int, H: int, L: int, D: int, dtype: torch.dtype, npg: int, pipe: bool = False) -> int:
    """L2 bytes of one step, the groups running at once: every program reads h_{t-1} (H) for the whole batch and
    its gates_x (4H, once per group), except in a unidirectional layer ≥ 1, which reads its input row (D·H)
    instead of gates_x; each group writes its h_t. Unidirectional: every layer runs at once; bidirectional: the
    two directions of one layer (its layers ≥ 1 project their input beforehand: see ``profile``). ``pipe``: the
    unidirectional layers ≥ 1 read gates_x as layer 0 does, and a projection group per layer ≥ 1 reads its input
    row and writes its gates_x."""
    x = torch.finfo(dtype).bits // 8
    first = npg * B * H * x + B * 4 * H * x + B * H * x
    upper = npg * B * (H + D * H) * x + B * H * x
    if D == 1 and pipe:
        return L * first + (L - 1) * (npg * B * H * x + B * 4 * H * x)
    if D == 1:
        return first + (L - 1) * upper
    return 2 * first


def resources(kernel) -> dict:
    from lstm_gpu.kernels import triton_sm90
    if getattr(kernel.metadata, "global_scratch_size", 0):      # its launch would fail: no triton.set_allocator
        raise ValueError(f"{kernel.name} needs {kernel.metadata.global_scratch_size} bytes of Triton's global scratch")
    usage = triton_sm90.resource_usage(kernel)
    return dict(regs=usage["REG"], spill_bytes=usage["STACK"] + usage["LOCAL"],
                loop_spills=triton_sm90.loop_local_accesses(kernel),
                shared_bytes=max(usage["SHARED"], kernel.metadata.shared))


def reloads(code: list, loop: tuple[int, int] | None) -> int:
    """Local-memory loads (LDL: values ptxas kept in local memory, reloaded) inside a loop."""
    return 0 if loop is None else sum(1 for i in code if loop[0] <= i.addr <= loop[1] and i.op == "LDL")


def forward_us(kernel, cfg, *, B: int, H: int, T: int, L: int, D: int, dt) -> dict:
    """The modeled forward of a compiled stack kernel: its step, the projection's share, the whole launch (µs).
    A reload from local memory inside the projection loop is charged as a serial L1 hit (an upper bound: the
    loads of loop invariants can issue ahead of their use)."""
    code = sass.parse(triton_sm90_sass(kernel))
    main, projection = outer_loops(code)
    reloaded = reloads(code, projection) * static.PARAMS["L1"] / (static.PARAMS["CLOCK_GHZ"] * 1e3)
    step = read_step(code, main)
    pipe = cfg.proj_groups > 0
    grid = step_bytes(B=B, H=H, L=L, D=D, dtype=dt, npg=cfg.programs_per_group, pipe=pipe)
    m = static.model(step, warps=cfg.num_warps, programs=cfg.num_programs, grid_bytes=grid)
    m["step_us"] += exposed_after_arrival(code, main)
    steps = L * T if D == 2 else T + (2 if pipe else 1) * (L - 1)
    pre_us, pre_bytes = 0.0, 0
    if pipe:        # the projection groups' steps run beside the layers' (their bytes are in ``grid``)
        pre_us = static.model(read_step(code, projection), warps=cfg.num_warps, programs=cfg.num_programs,
                              grid_bytes=grid)["step_us"] + exposed_after_arrival(code, projection) + reloaded
        m["step_us"] = max(m["step_us"], pre_us)
    stack_us = steps * m["step_us"]
    if projection is not None and not pipe:
        # every program of a layer ≥ 1 reads, per iteration, two input rows (B × D·H) beside each of the layer
        # below's last T - T//2 steps, or (program pairs, projection_halves = 2) one half row beside each of
        # its T steps
        x = torch.finfo(dt).bits // 8
        if cfg.projection_halves == 2:
            pre_bytes, iterations = D * cfg.programs_per_group * B * H * x, T
        else:
            pre_bytes, iterations = D * cfg.programs_per_group * 2 * B * D * H * x, T - T // 2
        pre_us = static.model(read_step(code, projection), warps=cfg.num_warps, programs=cfg.num_programs,
                              grid_bytes=0)["step_us"] + reloaded
        beside = max(m["step_us"] + pre_bytes / static.PARAMS["L2_BW"] * 1e6, pre_us)
        stack_us += (L - 1) * iterations * (beside - m["step_us"])
    return dict(step=step, step_us=m["step_us"], steps=steps, stack_us=stack_us, pre_us=pre_us,
                pre_bytes=pre_bytes, grid=grid, reloads=reloads(code, projection))


def exposed_before_poll(code: list, loop: tuple[int, int]) -> float:
    """µs of the rounds of loads the backward's step issues after its arrival (polled: its last store) and waits
    for before its poll (a prefetch consumed only after the poll hides behind the poll's round trip and the
    exchange round after it)."""
    lo, hi = loop
    body = [i for i in code if lo <= i.addr <= hi]
    poll = min(a for a, b in sass.loops(body) if (a, b) != loop and any(
        i.op == "ATOMG" or sass._is_data_poll(i) for i in body if a <= i.addr <= b))
    arrivals = [i.addr for i in body if i.op == "REDG"]
    # polled (no arrival): from the last store before the poll (its first try's volatile loads are the
    # synchronisation's round trip, not a round of their own: ``sass.load_phases``)
    arrival = min(arrivals) if arrivals else max(i.addr for i in body if i.op == "STG" and i.addr < poll)
    tail = [i for i in body if arrival < i.addr < poll]
    p = static.PARAMS
    kinds = sass.load_phases(tail, poll, poll) if tail else []
    return sum(p["DRAM"] if k == "dram" else p["L2"] for k in kinds) / (p["CLOCK_GHZ"] * 1e3)


def backward_bytes(*, B: int, H: int, L: int, D: int, dtype: torch.dtype, npg: int, pipe: bool) -> int:
    """L2 bytes of one backward step, the groups running at once: each group's step moves what the single-layer
    backward's does (bench/static.py: every program reads its group's dz_t, 16-bit where exchanged so, and its
    saved tensors and dy; writes dz); unidirectional, every layer runs at once, and ``pipe``: a projection group
    per layer below the top reads the dz of the layer above (every program all of it) and writes dy; without,
    each layer below the top reads it in its own loop. Bidirectional: the two directions of one layer (the
    projection of the layer below runs beside them: see ``backward_us``)."""
    x = torch.finfo(dtype).bits // 8
    z = 2 if x == 2 else (8 if dtype == torch.float64 else 4)
    group = static.step_bytes("bwd", B=B, H=H, dtype=dtype, programs=npg, low_exchange=x == 2)
    above = npg * B * 4 * D * H * z
    if D == 1:
        return L * group + (L - 1) * (above + (B * H * 4 if pipe else 0))
    return 2 * group


def backward_us(kernel, cfg, *, B: int, H: int, T: int, L: int, D: int, dt) -> dict:
    """The modeled backward of a compiled stack kernel, as ``forward_us``: [dz][arrive][prefetch][wait][read dz,
    dh = dz·W_hh], one poll a step. Unidirectional with projection groups: T + 2(L-1) steps of the slower of a
    layer's step and a projection step; bidirectional: L·T steps, a layer below the top projecting its dy
    (dz_{l+1}·W_ih(l+1)) beside the steps of the layer above: program pairs half of it each (one direction
    above's dz) beside every step, or two whole rows beside each of the last T - T//2."""
    code = sass.parse(triton_sm90_sass(kernel))
    main, projection = outer_loops(code)
    step = sass.read_step(code, loop=main)
    pipe = cfg.proj_groups > 0
    grid = backward_bytes(B=B, H=H, L=L, D=D, dtype=dt, npg=cfg.programs_per_group, pipe=pipe)
    m = static.model(step, warps=cfg.num_warps, programs=cfg.num_programs, grid_bytes=grid)
    step_us = m["step_us"] + exposed_before_poll(code, main)
    steps = L * T if D == 2 else T + (2 if pipe else 1) * (L - 1)
    pre_us, pre_bytes = 0.0, 0
    if pipe:
        pre_us = static.model(read_step(code, projection), warps=cfg.num_warps, programs=cfg.num_programs,
                              grid_bytes=grid)["step_us"]
        step_us = max(step_us, pre_us)
    total = steps * step_us
    if projection is not None and not pipe:
        z = torch.finfo(dt).bits // 8 if dt in (torch.float16, torch.bfloat16) else 4
        npg = cfg.programs_per_group
        if cfg.projection_halves == 2:
            pre_bytes, iterations = D * npg * B * 4 * H * z, T
        else:
            pre_bytes, iterations = D * npg * 2 * B * D * 4 * H * z, T - T // 2
        pre_us = static.model(read_step(code, projection), warps=cfg.num_warps, programs=cfg.num_programs,
                              grid_bytes=0)["step_us"]
        beside = max(step_us + pre_bytes / static.PARAMS["L2_BW"] * 1e6, pre_us)
        total += (L - 1) * iterations * (beside - step_us)
    return dict(step=step, step_us=step_us, steps=steps, total_us=total, pre_us=pre_us, pre_bytes=pre_bytes,
                grid=grid)


def triton_sm90_sass(kernel) -> str:
    from lstm_gpu.kernels import triton_sm90
    return triton_sm90.sass(kernel)


def profile(B: int, H: int, T: int, dtype: str, L: int, bidirectional: bool) -> StackRow:
    from lstm_gpu.kernels import triton_sm90
    dt, D = getattr(torch, dtype), 2 if bidirectional else 1
    cfg, launch = capture("fwd", B=B, H=H, T=T, L=L, D=D, dtype=dt)
    fwd = triton_sm90.compile_launch(launch)
    fwd_train = triton_sm90.compile_launch(capture("fwd", B=B, H=H, T=T, L=L, D=D, dtype=dt, save=True)[1])
    bwd = triton_sm90.compile_launch(capture("bwd", B=B, H=H, T=T, L=L, D=D, dtype=dt)[1])
    dims = dict(B=B, H=H, T=T, L=L, D=D, dt=dt)
    inf, train = forward_us(fwd, cfg, **dims), forward_us(fwd_train, cfg, **dims)
    back = backward_us(bwd, cfg, **dims)
    bwd_step, bwd_us = back["step_us"], back["total_us"]
    step, stack_us = inf["step"], inf["stack_us"]
    (single,) = static.case_rows(B, H, T, dtype, "fwd")
    single_fwd, single_bwd = static.case_rows(B, H, T, dtype, "fwd+bwd")
    layer_steps = L * D * T
    train_layers = layer_steps * (single_fwd.step_us + single_bwd.step_us)
    f, b = resources(fwd), resources(bwd)
    return StackRow(
        B=B, H=H, T=T, dtype=dtype, layers=L, directions=D, programs=cfg.num_programs, warps=cfg.num_warps,
        fwd_regs=f["regs"], fwd_spill_bytes=f["spill_bytes"], fwd_loop_spills=f["loop_spills"],
        fwd_shared_bytes=f["shared_bytes"], bwd_regs=b["regs"], bwd_spill_bytes=b["spill_bytes"],
        bwd_loop_spills=b["loop_spills"], bwd_shared_bytes=b["shared_bytes"], instructions=step.instructions,
        mma=step.counts.get("mma", 0), mma_chain=step.mma_chain, sync_round_trips=step.sync_round_trips,
        load_phases="+".join(step.load_phases), grid_bytes=inf["grid"], step_us=round(inf["step_us"], 3),
        projection_us=round(inf["pre_us"], 3), projection_bytes=inf["pre_bytes"], steps=inf["steps"],
        stack_us=round(stack_us, 1), per_layer_step_us=round(single.step_us, 3),
        per_layer_steps=layer_steps, per_layer_us=round(layer_steps * single.step_us, 1),
        ratio=round(stack_us / (layer_steps * single.step_us), 3), bwd_step_us=round(bwd_step, 3),
        train_stack_us=round(train["stack_us"] + bwd_us, 1), train_per_layer_us=round(train_layers, 1),
        train_ratio=round((train["stack_us"] + bwd_us) / train_layers, 3),
        fwd_projection_reloads=max(inf["reloads"], train["reloads"]), triton=static._triton_version())


def markdown(rows: list[StackRow]) -> str:
    head = ("| stack (B, H, T, dtype, layers x directions) | programs x warps | "
            "fwd regs / spills in loop (projection reloads) / smem KB | "
            "bwd regs / spills in loop / smem KB | instr / step | HMMA / chain | modeled µs/step | "
            "projection µs / iteration | steps | modeled stack µs | per-layer today: µs/step x steps = µs | ratio | "
            "training (fwd + bwd, bwd µs/step): stack / per-layer µs = ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.B}, {r.H}, {r.T}, {r.dtype}, {r.layers} x {r.directions} | {r.programs} x {r.warps} | "
            f"{r.fwd_regs} / {r.fwd_loop_spills} ({r.fwd_projection_reloads}) / {r.fwd_shared_bytes // 1024} | "
            f"{r.bwd_regs} / {r.bwd_loop_spills} / {r.bwd_shared_bytes // 1024} | {r.instructions} | "
            f"{r.mma} / {r.mma_chain} | {r.step_us:.2f} | {f'{r.projection_us:.2f}' if r.projection_us else '-'} | "
            f"{r.steps} | {r.stack_us:.0f} | "
            f"{r.per_layer_step_us:.2f} x {r.per_layer_steps} = {r.per_layer_us:.0f} | **{r.ratio:.2f}** | "
            f"{r.train_stack_us:.0f} / {r.train_per_layer_us:.0f} = {r.train_ratio:.2f} (bwd {r.bwd_step_us:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.static_stack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", help="write the rows to this CSV (e.g. reports/data/static-stack-h100.csv)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        ap.error("unset TRITON_INTERPRET: the sm_90 compile needs the real Triton compiler")
    rows = [profile(*case) for case in CASES]
    print(f"MODELED FROM sm_90 CODE, NOT MEASURED (132-SM H100 configs, triton {static._triton_version()})")
    print(static.params_line())
    print(markdown(rows))
    if args.csv:
        os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            for r in rows:
                w.writerow(asdict(r))
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
