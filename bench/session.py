"""The steps of one GPU session (bench/gpu_session.sh), each a Python function, each runnable on its own:

    python -m bench.session versions   # GPU, SMs, driver, CUDA, cuDNN, torch, triton, numba, numba-cuda, git
    python -m bench.session warmup     # compile every Triton config the later steps launch, in parallel processes
    python -m bench.session smoke --backends triton    # correctness grid vs the reference and cuDNN, fwd + bwd
    python -m bench.session headline   # the headline rows of reports/README.md: cudnn, triton, numba, floor
    python -m bench.session stack      # the one-launch stack (2 layers, uni/bidirectional) against cuDNN, per layer
    python -m bench.session host       # host time per module call, per backend (bench/host_overhead.py)
    python -m bench.session quick      # python -m bench --quick (the kernels and cuDNN), as far as time allows
    python -m bench.session profile    # python -m bench.profile on the headline shape
    python -m bench.session all        # every step in this one process (the CPU dry run's test does this)

``--dry`` (or LSTM_GPU_SESSION_DRY=1) runs the same code on CPU with tiny shapes through the emulators
(Triton interpreter, Numba simulator) in seconds: it proves the plumbing, never the GPU. Outputs then go to
``--data`` (default $OUT/data), never to reports/.

Outputs (GPU; ``<gpu>`` is the device name as a slug, e.g. nvidia-h100-80gb-hbm3), written row by row so a
step killed at its time limit keeps what it finished:
    reports/data/gpu-<gpu>-versions.json   the machine
    reports/data/gpu-<gpu>-smoke.csv       one row per (backend, dtype, batch, hidden, variant): ok / fail /
                                           error / unsupported / not run, worst error ratio, cuDNN's, the error
    reports/data/gpu-<gpu>-headline.csv    the headline rows in the sweep's long format (+ .json machine record,
                                           + .md: reports/README.md's headline table filled in)
    reports/data/gpu-<gpu>-stack.csv       the stack rows, same format (+ .json, + .md: its table)
    reports/data/gpu-<gpu>-host.csv        host µs per module call (2 layers, bidirectional, T = 1)
    reports/data/gpu-<gpu>-<time>-session.csv/.json   the --quick sweep
    reports/profile-<gpu>.md               the profile
Each step takes ``--limit SECONDS`` (its share of the session; the shell's ``timeout`` is the hard stop):
the smoke grid and the warm-up stop starting new work shortly before it runs out.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BARRIER_TIMEOUT_POLLS = 10_000_000          # smoke: a barrier that waits longer gives up (seconds, not a hang)
SMOKE_COLUMNS = ["backend", "dtype", "batch", "hidden", "seq_len", "variant", "status", "ratio", "worst",
                 "cudnn_ratio", "seconds", "error", "gpu", "git_sha"]
SMOKE_VARIANTS = ("plain", "lengths+reverse")
PROJ_VARIANT = "proj+lengths+rev"   # lengths+reverse with proj_size = H/2 (the kernels run it folded into W_hh)


@dataclass(frozen=True)
class Grid:
    dtypes: tuple
    hidden: tuple
    batch: tuple
    seq_len: int
    extra: tuple = ()       # (dtype, hidden, batch) cases after the product
    proj: tuple = ()        # (dtype, hidden, batch) cases of the above that also run PROJ_VARIANT

    def cases(self) -> list[tuple]:
        """(dtype, hidden, batch) of every case, in the order they run: the product, then ``extra``; only the
        hidden sizes in LSTM_GPU_SMOKE_HIDDEN (comma-separated) where it is set (a re-run of failed cases)."""
        only = {int(h) for h in os.environ.get("LSTM_GPU_SMOKE_HIDDEN", "").split(",") if h.strip()}
        cases = [(d, H, B) for d in self.dtypes for H in self.hidden for B in self.batch] + list(self.extra)
        return [c for c in cases if not only or c[1] in only]

    def variants(self, case: tuple) -> tuple:
        return SMOKE_VARIANTS + ((PROJ_VARIANT,) if case in self.proj else ())


# The newest cases come last (the grid runs in order under a time limit): the 16-bit H = 1536 cases (K in two
# pieces, 224 KB of shared memory per program), then tf32 at H = 1024 (8 units a program, the gates fused; one
# tile, and four walked per step)
SMOKE_GPU = Grid(dtypes=("fp16", "bf16", "fp32-ieee"), hidden=(256, 768, 1024), batch=(1, 16, 64), seq_len=65,
                 extra=(("fp16", 1536, 16), ("bf16", 1536, 16), ("fp32-tf32", 1024, 16), ("fp32-tf32", 1024, 64)),
                 proj=(("fp16", 768, 16), ("fp32-ieee", 256, 16)))
SMOKE_DRY = Grid(dtypes=("fp32-ieee",), hidden=(8,), batch=(2,), seq_len=3, proj=(("fp32-ieee", 8, 2),))
# reports/README.md's headline rows: (batch, hidden, seq_len, dtype, mode)
HEADLINE_GPU = [(16, 768, 1024, "fp16", "fwd"), (16, 768, 1024, "fp16", "fwd+bwd"), (16, 768, 1024, "bf16", "fwd"),
                (64, 1024, 1024, "fp32-tf32", "fwd"), (1, 256, 1024, "fp16", "fwd"),
                (64, 1024, 1024, "bf16", "fwd")]       # issue 11's target case: the transposed (wgmma) forward
HEADLINE_DRY = [(2, 8, 4, "fp32-ieee", "fwd"), (2, 8, 4, "fp32-ieee", "fwd+bwd")]
# The one-launch stack (kernels/triton_stack.py) against cuDNN's multi-layer LSTM, issue 16's modeled cases:
# (batch, hidden, seq_len, dtype, mode, layers, bidirectional)
STACK_GPU = [(16, 512, 1024, "fp16", "fwd", 2, False), (16, 512, 1024, "fp16", "fwd", 2, True),
             (16, 512, 1024, "fp16", "fwd+bwd", 2, False), (16, 512, 1024, "fp16", "fwd+bwd", 2, True)]
STACK_DRY = [(2, 8, 4, "fp32-ieee", "fwd+bwd", 2, False), (2, 8, 4, "fp32-ieee", "fwd", 2, True)]
# "triton-layers": the same kernels one launch per layer and direction, what issue 16's ratio compares against
STACK_PROVIDERS = ("cudnn", "triton", "triton-layers", "triton-stack-counters")
HEADLINE_PROVIDERS = ("cudnn", "triton", "numba")
# 16-bit headline rows also time the forward's h exchange and the backward's dz exchange through the step counter
# where the configs poll them (one 16-row tile per batch group; elsewhere the same config as "triton"): the static
# model rates the polled exchanges faster (B16 H768 fp16 forward 1.17 vs 1.78 µs/step, backward 3.08 vs 3.47) on
# its assumed fence and round-trip costs, which the
# measurement checks (kernels/triton_lstm.py, _read_h); and with the forward's tensor-core product per gate, the
# path the fused dot replaced (a check of the model); and with the fused product in rows where the configs
# transpose it (a check of the model's shared-memory floor, which rates rows slower); and without K folded into M
# where the configs fold it (W_hh in shared memory instead of registers: the model rates it slower). (The per-gate
# product, measured 1.5-3x slower than the fused one on the H200, is no longer timed here: "triton-per-gate".)
HEADLINE_16BIT_EXTRA = ("triton-counter", "triton-unfolded", "triton-rows", "triton-polled")
# ("triton-polled": both exchanges polled, the forward's and the backward's; the backward's was measured 3 µs a step
# slower than the counter when its check took a block reduction per tile, 8 a step: now 2, measured again)
QUICK_GPU = ["--quick", "--dtype", "fp16,bf16,fp32-tf32", "--providers", "cudnn,triton,numba"]
QUICK_DRY = ["--quick", "--batch", "1", "--hidden", "8", "--seq-len", "2", "--dtype", "fp32-ieee", "--mode", "fwd",
             "--providers", "cudnn,triton", "--no-floor", "--no-plots", "--min-reps", "1", "--max-reps", "2"]
PROFILE_GPU = ["--shapes", "16x768x1024", "--no-ncu"]
PROFILE_DRY = ["--shapes", "2x8x2", "--providers", "cudnn,triton", "--no-ncu"]
GATE_STEPS = 256                            # headline gate: min(T, this) steps (as --quick)


def dry_default() -> bool:
    return os.environ.get("LSTM_GPU_SESSION_DRY", "0") == "1"


class Ctx:
    """What every step shares: dry or not, where outputs go, the machine's name, a soft deadline."""

    def __init__(self, dry: bool, data: Path, limit: float | None = None, out: Path | None = None):
        self.dry, self.data, self.out = dry, data, out
        self.t_end = None if limit is None else time.monotonic() + limit
        data.mkdir(parents=True, exist_ok=True)
        from . import env as envmod
        from .sweep import _slug
        self.gpu = envmod.gpu_name()
        self.prefix = "cpu-dry" if dry or not envmod.on_gpu() else f"gpu-{_slug(self.gpu)}"

    def path(self, what: str) -> Path:
        return self.data / f"{self.prefix}-{what}"

    def left(self) -> float:
        return float("inf") if self.t_end is None else self.t_end - time.monotonic()

    def device(self):
        import torch
        return torch.device("cuda" if torch.cuda.is_available() and not self.dry else "cpu")


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- versions ----------------------------------------------------------------------------------
def machine_line(env: dict) -> str:
    """The line reports/README.md quotes under its tables."""
    return (f"{env['gpu']} ({env.get('sm_count')} SMs), driver {env.get('driver')}, CUDA {env.get('torch_cuda')}, "
            f"cuDNN {env.get('cudnn')}, torch {env.get('torch')}, triton {env.get('triton')}, "
            f"numba {env.get('numba')}, numba-cuda {env.get('numba_cuda')}, git {str(env.get('git_sha'))[:12]}"
            f"{' dirty' if env.get('git_dirty') else ''}")


def step_versions(ctx: Ctx) -> dict:
    from . import env as envmod
    env = envmod.collect(["session", "versions"])
    try:
        import importlib.metadata as md
        env["numba_cuda_dist"] = md.version("numba-cuda")
    except Exception:  # noqa: BLE001
        env["numba_cuda_dist"] = None
    env["numba_cudadevrt"] = _cudadevrt()
    env["machine"] = machine_line(env)
    ctx.path("versions.json").write_text(json.dumps(env, indent=2, default=str))
    log(envmod.banner(env))
    log(f"machine: {env['machine']}")
    log(f"numba's libcudadevrt.a (grid.sync links against it): {env['numba_cudadevrt']}")
    return env


def _cudadevrt() -> str:
    """Where numba finds the static CUDA device runtime that a kernel with grid.sync links against: when it
    finds none, every numba kernel fails to link, and this line says so before the tests do."""
    try:
        from numba.cuda.cudadrv import libs
        path = libs.get_cudalib("cudadevrt", static=True)
    except Exception as e:  # noqa: BLE001 - recorded
        return f"unknown ({type(e).__name__}: {e})"
    return path if os.path.exists(path) else f"NOT FOUND (numba looked for {path})"


# ---- the smoke grid ----------------------------------------------------------------------------
def _lengths(B: int, T: int):
    """Unsorted lengths with the extremes: T, 1, and in between (B = 1: T - 1, so masking is exercised)."""
    import torch
    if B == 1:
        return torch.tensor([max(1, T - 1)])
    pattern = [T, 1, T // 2 + 1, T - 1]
    return torch.tensor([pattern[i % len(pattern)] for i in range(B)])


def run_variant(model, variant: str, x, dy, lengths) -> dict:
    """One call of ``model`` the way the smoke grid checks it: every output and every gradient.

    plain: unidirectional, full length; also an inference (no_grad) forward, compared as ``y_infer``.
    lengths+reverse: bidirectional over an unsorted PackedSequence (the reverse direction, lengths masking).
    PROJ_VARIANT: the same with proj_size = H // 2.
    """
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    out = {}
    xg = x.detach().clone().requires_grad_()
    for p in model.parameters():
        p.grad = None
    if variant == "plain":
        with torch.no_grad():
            out["y_infer"] = model(x)[0]
        y, (h, c) = model(xg)
    else:
        packed = pack_padded_sequence(xg, lengths, enforce_sorted=False)
        yp, (h, c) = model(packed)
        y, _ = pad_packed_sequence(yp, total_length=x.shape[0])
    torch.autograd.backward([y, h, c], [dy[..., :y.shape[-1]], torch.ones_like(h), torch.ones_like(c)])
    out.update(y=y.detach(), h_n=h.detach(), c_n=c.detach(), grad_x=xg.grad)
    out.update({f"grad_{k}": p.grad for k, p in model.named_parameters()})
    return out


def _shape(H: int, variant: str) -> dict:
    return dict(bidirectional=variant != "plain", proj_size=H // 2 if variant == PROJ_VARIANT else 0)


def _model(kind: str, H: int, variant: str, weights: dict, dtype, device):
    import torch
    import lstm_gpu
    if kind == "cudnn":
        m = torch.nn.LSTM(H, H, **_shape(H, variant))
    else:
        m = lstm_gpu.LSTM(H, H, backend=kind, **_shape(H, variant))
    m = m.to(device=device, dtype=dtype)
    m.load_state_dict({k: v.to(dtype) for k, v in weights[variant].items()})
    return m


def _weights(H: int, seed: int = 0) -> dict:
    """nn.LSTM's initial weights for each variant, from one seed."""
    import torch
    out = {}
    for variant in SMOKE_VARIANTS + (PROJ_VARIANT,):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lstm = torch.nn.LSTM(H, H, **_shape(H, variant))
            out[variant] = {k: v.detach().clone() for k, v in lstm.state_dict().items()}
    return out


def _oracle(H, variant, weights, dtype, x, dy, lengths, device) -> dict:
    """The reference recurrence on the dtype-rounded weights and input, upcast (fp64 on CPU, fp32 IEEE on GPU)."""
    import torch
    odt = torch.float64 if device.type == "cpu" else torch.float32
    rounded = {variant: {k: v.to(dtype).to(odt) for k, v in w.items()} for variant, w in weights.items()}
    m = _model("reference", H, variant, rounded, odt, device)
    return run_variant(m, variant, x.to(odt), dy.to(odt), lengths)


def _smoke_writer(path: Path, fresh: bool):
    new = fresh or not path.exists()
    f = open(path, "w" if new else "a", newline="")
    w = csv.DictWriter(f, fieldnames=SMOKE_COLUMNS)
    if new:
        w.writeheader()
        f.flush()
    return f, w


def step_smoke(ctx: Ctx, backends=("triton", "numba"), fresh: bool = True) -> list[dict]:
    """The correctness grid: each backend against the reference oracle (the gate's tolerance per dtype)
    and, for context, cuDNN's own distance to the same oracle. LSTM_GPU_BARRIER_TIMEOUT is on, so a Triton
    barrier that never completes raises instead of hanging. Rows go to <prefix>-smoke.csv: a new file, or
    appended (``fresh=False``: the session's second smoke process)."""
    saved_timeout = os.environ.get("LSTM_GPU_BARRIER_TIMEOUT")
    os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = str(BARRIER_TIMEOUT_POLLS)
    import torch
    import lstm_gpu
    from . import env as envmod
    from .gate import compare
    from .providers import DTYPES
    grid = SMOKE_DRY if ctx.dry else SMOKE_GPU
    device = ctx.device()
    sha, _ = envmod.git_sha()
    f, w = _smoke_writer(ctx.path("smoke.csv"), fresh)
    rows = []
    saved = envmod.save_fp32_precision()

    def emit(row):
        row = {**row, "gpu": ctx.gpu, "git_sha": sha[:12]}
        w.writerow(row)
        f.flush()
        rows.append(row)
        log(f"smoke {row['backend']:6s} {row['dtype']:9s} B={row['batch']:<3} H={row['hidden']:<5} "
            f"{row['variant']:16s} {row['status']:11s} {row.get('ratio', '')} {row.get('error', '')[:160]}")

    try:
        weights_of = {}
        for dtype_name, H, B in grid.cases():
            envmod.set_fp32_precision(envmod.FP32_MODES.get(dtype_name, "ieee"))
            dtype = DTYPES[dtype_name]
            weights = weights_of[H] = weights_of.get(H) or _weights(H)
            T = grid.seq_len
            base = dict(dtype=dtype_name, batch=B, hidden=H, seq_len=T)
            g = torch.Generator(device=device).manual_seed(B * 1000 + H)
            x = torch.randn(T, B, H, generator=g, device=device).to(dtype)
            dy = torch.randn(T, B, 2 * H, generator=g, device=device).to(dtype)
            lengths = _lengths(B, T)
            for variant in grid.variants((dtype_name, H, B)):
                ref = cudnn_ratio = None
                for backend in backends:
                    row = dict(base, backend=backend, variant=variant)
                    if ctx.left() < 5:
                        emit(dict(row, status="not run", error="out of time (step limit)"))
                        continue
                    try:
                        lstm_gpu.select_backend(backend, device=device, dtype=dtype, hidden_size=H, batch=B)
                    except (ValueError, NotImplementedError) as e:
                        emit(dict(row, status="unsupported", error=" ".join(str(e).split())[:300]))
                        continue
                    t0 = time.perf_counter()
                    try:
                        if ref is None:
                            ref = _oracle(H, variant, weights, dtype, x, dy, lengths, device)
                            try:
                                cu = run_variant(_model("cudnn", H, variant, weights, dtype, device),
                                                 variant, x, dy, lengths)
                                cudnn_ratio = compare(cu, ref, dtype_name).ratio
                            except Exception as e:  # noqa: BLE001 - context only
                                cudnn_ratio = f"error: {type(e).__name__}"
                        got = run_variant(_model(backend, H, variant, weights, dtype, device), variant,
                                          x, dy, lengths)
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        gate = compare(got, ref, dtype_name)
                        emit(dict(row, status="ok" if gate.ok else "fail", ratio=f"{gate.ratio:.3g}",
                                  worst=gate.worst, cudnn_ratio=_fmt(cudnn_ratio),
                                  seconds=f"{time.perf_counter() - t0:.2f}",
                                  error="" if gate.ok else gate.detail))
                    except Exception as e:  # noqa: BLE001 - recorded, the grid goes on
                        emit(dict(row, status="error", seconds=f"{time.perf_counter() - t0:.2f}",
                                  cudnn_ratio=_fmt(cudnn_ratio),
                                  error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]))
                        if "CUDA error" in str(e) or "illegal" in str(e):
                            log("a CUDA error poisons this process's context: the rest of this step "
                                "would fail the same way")
    finally:
        envmod.restore_fp32_precision(saved)
        f.close()
        if saved_timeout is None:
            os.environ.pop("LSTM_GPU_BARRIER_TIMEOUT", None)
        else:
            os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = saved_timeout
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    log(f"smoke ({', '.join(backends)}): {counts}")
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---- warm-up -----------------------------------------------------------------------------------
def warmup_tasks(dry: bool) -> list[dict]:
    """Every Triton launch configuration the later steps make, in the order they need them: the smoke
    grid (barrier time-out on), then the headline shapes (with the floor kernel), the stack's, --quick's."""
    from .__main__ import QUICK, _ints, _strs
    grid = SMOKE_DRY if dry else SMOKE_GPU
    tasks = [dict(kind="smoke", dtype=d, B=B, H=H, T=grid.seq_len) for d, H, B in grid.cases()]
    headline = [(B, H, T, d) for B, H, T, d, _ in (HEADLINE_DRY if dry else HEADLINE_GPU)]
    quick = [] if dry else [(B, H, T, d) for d in _strs("fp16,bf16,fp32-tf32") for H in _ints(QUICK["hidden"])
                            for B in _ints(QUICK["batch"]) for T in _ints(QUICK["seq_len"])]
    stack = {(B, H, T, d, L, bi): None for B, H, T, d, _, L, bi in (STACK_DRY if dry else STACK_GPU)}
    seen = set()
    for B, H, T, d in headline:
        if (B, H, T, d) not in seen:
            seen.add((B, H, T, d))
            tasks.append(dict(kind="bench", dtype=d, B=B, H=H, T=T, forward_variants=d in ("fp16", "bf16")))
    tasks += [dict(kind="stack", dtype=d, B=B, H=H, T=T, L=L, bi=bi) for B, H, T, d, L, bi in stack]
    for B, H, T, d in quick:
        if (B, H, T, d) not in seen:
            seen.add((B, H, T, d))
            tasks.append(dict(kind="bench", dtype=d, B=B, H=H, T=T))
    return tasks


def warm_one(task: dict) -> tuple[dict, float, str]:
    """In a worker process: make the calls a later step makes for this task (compiling them), check nothing."""
    t0 = time.perf_counter()
    try:
        import torch
        from . import env as envmod
        from .providers import DTYPES, PROVIDERS, Shape, outputs, shared_weights
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = DTYPES[task["dtype"]]
        envmod.set_fp32_precision(envmod.FP32_MODES.get(task["dtype"], "ieee"))
        B, H, T = task["B"], task["H"], task["T"]
        if task["kind"] == "smoke":
            os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = str(BARRIER_TIMEOUT_POLLS)
            weights = _weights(H)
            x = torch.randn(T, B, H, device=device).to(dtype)
            dy = torch.randn(T, B, 2 * H, device=device).to(dtype)
            for variant in SMOKE_VARIANTS:     # PROJ_VARIANT launches the same kernels (W_hr folded into W_hh)
                run_variant(_model("triton", H, variant, weights, dtype, device), variant, x, dy, _lengths(B, T))
        elif task["kind"] == "stack":
            os.environ.pop("LSTM_GPU_BARRIER_TIMEOUT", None)
            shape = Shape(B, H, T, layers=task["L"], bidirectional=task["bi"])
            x = torch.randn(T, B, H, device=device).to(dtype)
            dy = torch.randn(T, B, shape.directions * H, device=device).to(dtype)
            for provider in STACK_PROVIDERS[1:]:
                prep = PROVIDERS[provider](shape, dtype, shared_weights(shape), device)
                for mode in ("fwd", "fwd+bwd"):
                    outputs(prep, x, dy, mode)
        else:
            os.environ.pop("LSTM_GPU_BARRIER_TIMEOUT", None)
            shape = Shape(B, H, T)
            x = torch.randn(T, B, H, device=device).to(dtype)
            dy = torch.randn(T, B, H, device=device).to(dtype)
            for provider in ("triton",) + (HEADLINE_16BIT_EXTRA if task.get("forward_variants") else ()):
                prep = PROVIDERS[provider](shape, dtype, shared_weights(shape), device)
                for mode in ("fwd", "fwd+bwd"):
                    outputs(prep, x, dy, mode)
            from . import floor as fl
            programs = 1 if fl.interpreted() else fl.programs_for(B, H, dtype, _sm_count())
            fl.check_floor(B, H, dtype, device, programs, steps=2)
            h, bar = fl.make_buffers(B, H, 2, dtype, device)
            fl.floor_launch(h, bar, programs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return task, time.perf_counter() - t0, ""
    except Exception as e:  # noqa: BLE001 - a config that fails here fails again, recorded, in its step
        return task, time.perf_counter() - t0, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _sm_count() -> int:
    import torch
    return torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132


def step_warmup(ctx: Ctx, processes: int | None = None) -> list[tuple]:
    """Compile in parallel: each task in a fresh spawned process (CUDA and fork do not mix); Triton's
    on-disk cache (~/.triton/cache) hands the compiled kernels to the later steps' processes. Numba
    keeps its compiled kernels per process, so the Numba kernels compile in their own steps."""
    import multiprocessing as mp
    tasks = warmup_tasks(ctx.dry)
    processes = processes or (2 if ctx.dry else min(16, os.cpu_count() or 1))
    log(f"warm-up: {len(tasks)} task(s) in {processes} process(es)")
    done = []
    t0 = time.perf_counter()
    pool = mp.get_context("spawn").Pool(processes)
    try:
        for task, seconds, error in pool.imap_unordered(warm_one, tasks):
            done.append((task, seconds, error))
            log(f"warm {task['kind']:5s} {task['dtype']:9s} B={task['B']:<3} H={task['H']:<5} T={task['T']:<5} "
                f"{seconds:6.1f}s {error or 'ok'}")
            if ctx.left() < 5:
                log(f"warm-up: out of time after {len(done)}/{len(tasks)} tasks; the rest compile when first used")
                break
    finally:
        pool.terminate()
        pool.join()
    errors = sum(bool(e) for _, _, e in done)
    log(f"warm-up: {len(done)}/{len(tasks)} tasks in {time.perf_counter() - t0:.1f}s, {errors} error(s)")
    return done


# ---- headline ----------------------------------------------------------------------------------
def step_headline(ctx: Ctx) -> Path:
    """reports/README.md's headline rows: cudnn, triton, numba and the floor, gated, p50 (p20-p80), one CSV
    in the sweep's long format (+ the machine record and the README table filled in)."""
    saved_timeout = os.environ.pop("LSTM_GPU_BARRIER_TIMEOUT", None)     # timed as users run it: no time-out
    try:
        return _headline(ctx)
    finally:
        if saved_timeout is not None:
            os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = saved_timeout


def step_stack(ctx: Ctx) -> Path:
    """The one-launch stack against cuDNN (2 layers, uni- and bidirectional), gated, p50 (p20-p80): a CSV in
    the sweep's long format and a table (stack.md)."""
    saved_timeout = os.environ.pop("LSTM_GPU_BARRIER_TIMEOUT", None)
    try:
        return _headline(ctx, "stack")
    finally:
        if saved_timeout is not None:
            os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = saved_timeout


def _headline(ctx: Ctx, name: str = "headline") -> Path:
    from . import env as envmod
    from .providers import DTYPES, Shape
    from .sweep import STATUSES, Runner, ShapeInputs, SweepConfig, _Sink
    from .timing import TimingConfig
    if name == "stack":
        rows_spec, providers = (STACK_DRY if ctx.dry else STACK_GPU), STACK_PROVIDERS
    else:
        rows_spec = [(*r, 1, False) for r in (HEADLINE_DRY if ctx.dry else HEADLINE_GPU)]
        providers = HEADLINE_PROVIDERS
    timing = (TimingConfig(warmup_ms=0.0, rep_ms=0.0, min_reps=2, min_warmup=1, budget_ms=2_000.0) if ctx.dry
              else TimingConfig(warmup_ms=25.0, rep_ms=100.0, min_reps=10))
    cfg = SweepConfig(batch=[], hidden=[], seq_len=[], dtypes=[], modes=[], providers=list(providers),
                      out=ctx.data, gate_max_steps=GATE_STEPS, floor_steps=4 if ctx.dry else 1024, timing=timing,
                      progress=False)
    env = envmod.collect(["session", name])
    env["machine"] = machine_line(env)
    env["headline"] = [dict(batch=b, hidden=h, seq_len=t, dtype=d, mode=m, layers=L, bidirectional=bi)
                       for b, h, t, d, m, L, bi in rows_spec]
    csv_path, json_path = ctx.path(f"{name}.csv"), ctx.path(f"{name}.json")
    json_path.write_text(json.dumps(env, indent=2, default=str))
    sink = _Sink(csv_path)
    runner = Runner(cfg, env, sink)
    saved = envmod.save_fp32_precision()
    counts = dict.fromkeys(STATUSES, 0)
    try:
        for B, H, T, dtype_name, mode, L, bi in rows_spec:
            envmod.set_fp32_precision(envmod.FP32_MODES.get(dtype_name, "ieee"))
            shape = Shape(B, H, T, layers=L, bidirectional=bi)
            inputs = ShapeInputs(shape, DTYPES[dtype_name], runner.device, cfg.seed, cfg.gate_max_steps)
            runner.floor_us(shape, dtype_name)
            extra = HEADLINE_16BIT_EXTRA if name == "headline" and dtype_name in ("fp16", "bf16") else ()
            for provider in providers + extra:
                rows = runner.run_case(provider, mode, dtype_name, shape, inputs)
                sink.write(rows)
                counts[rows[0]["status"]] += 1
                log(f"{name} {provider:6s} B={B} H={H} T={T} L={L}{' bi' if bi else ''} {dtype_name} {mode}: "
                    f"{rows[0]['status']} {_time_cell(rows)} "
                    f"{rows[0].get('note', '')[:160] if rows[0]['status'] != 'ok' else ''}")
            del inputs
            runner._free()
    finally:
        envmod.restore_fp32_precision(saved)
        sink.close()
    env["status_counts"] = counts
    json_path.write_text(json.dumps(env, indent=2, default=str))
    md = headline_table(csv_path, env) if name == "headline" else stack_table(csv_path, env)
    ctx.path(f"{name}.md").write_text(md)
    log(md)
    return csv_path


def _time_cell(rows: list[dict]) -> str:
    for r in rows:
        if r.get("metric") == "time_per_step" and r.get("status") == "ok":
            return f"{r['p50']:.3g} us/step"
    return ""


def headline_table(csv_path: Path, env: dict) -> str:
    """reports/README.md's headline table, filled in from the headline CSV (measured cells only)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def find(provider, kernel="lstm", metric="time_per_step", **key):
        for r in rows:
            if (r["provider"] == provider and r["kernel"] == kernel and r["metric"] == metric
                    and all(r[k] == str(v) for k, v in key.items())):
                return r
        return None

    def cell(r):
        if r is None:
            return "not measured"
        if r["status"] != "ok" or not r["p50"]:
            return r["status"]
        return f"{float(r['p50']):.3g} ({float(r['p20']):.3g}-{float(r['p80']):.3g})"

    def ratio(a, b):
        if a is None or b is None or a["status"] != "ok" or b["status"] != "ok" or not a["p50"] or not b["p50"]:
            return ""
        return f"{float(a['p50']) / float(b['p50']):.2f}x"

    lines = [f"Machine: `{env['machine']}`", "",
             "| B | H | T | dtype | mode | cuDNN regime | cuDNN µs/step | triton µs/step | speedup | numba µs/step "
             "| speedup | floor µs/step | triton floor × | triton, step counter µs/step "
             "| triton, unfolded µs/step | triton, fused in rows µs/step | triton, polled µs/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in env["headline"]:
        key = dict(batch=spec["batch"], hidden=spec["hidden"], seq_len=spec["seq_len"], dtype=spec["dtype"],
                   mode=spec["mode"])
        cu, tr, nb = (find(p, **key) for p in HEADLINE_PROVIDERS)
        fl = find("floor", kernel="floor", batch=spec["batch"], hidden=spec["hidden"], dtype=spec["dtype"])
        fm = find("triton", metric="floor_multiple", **key)
        regime = (cu or tr or {}).get("cudnn_regime", "")
        counter, unfolded, fused_rows, polled = (find(p, **key) for p in HEADLINE_16BIT_EXTRA)
        lines.append(f"| {spec['batch']} | {spec['hidden']} | {spec['seq_len']} | {spec['dtype']} | {spec['mode']} | "
                     f"{regime} | {cell(cu)} | {cell(tr)} | {ratio(cu, tr)} | {cell(nb)} | {ratio(cu, nb)} | "
                     f"{cell(fl)} | {cell(fm) if fm else ''} | {cell(counter) if counter else ''} | "
                     f"{cell(unfolded) if unfolded else ''} | {cell(fused_rows) if fused_rows else ''} | "
                     f"{cell(polled) if polled else ''} |")
    lines += ["", "speedup = cuDNN time / kernel time (p50); µs/step p50 (p20-p80), input projection included."]
    return "\n".join(lines) + "\n"


def stack_table(csv_path: Path, env: dict) -> str:
    """The stack's table: cuDNN's multi-layer LSTM and the one-launch stack, measured cells only."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kernel"] == "lstm" and r["metric"] == "time_per_step"]

    def find(provider, spec):
        return next((r for r in rows if r["provider"] == provider and all(
            r[k] == str(spec[k]) for k in ("batch", "hidden", "seq_len", "dtype", "mode", "layers", "bidirectional"))),
            None)

    def cell(r):
        if r is None:
            return "not measured"
        if r["status"] != "ok":
            return r["status"]
        return f"{float(r['p50']):.3g} ({float(r['p20']):.3g}-{float(r['p80']):.3g})"

    def ratio(a, b):        # a's time over b's, both measured
        ok = a is not None and b is not None and a["status"] == b["status"] == "ok"
        return f"{float(a['p50']) / float(b['p50']):.2f}x" if ok else ""

    lines = [f"Machine: `{env['machine']}`", "",
             "| B | H | T | dtype | mode | layers × directions | cuDNN µs/step | triton (one launch) µs/step "
             "| speedup over cuDNN | triton per layer µs/step | one launch / per layer | one launch, counters µs/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in env["headline"]:
        cu, tr, tl_ = find("cudnn", spec), find("triton", spec), find("triton-layers", spec)
        tc = find("triton-stack-counters", spec)
        lines.append(f"| {spec['batch']} | {spec['hidden']} | {spec['seq_len']} | {spec['dtype']} | {spec['mode']} | "
                     f"{spec['layers']} × {2 if spec['bidirectional'] else 1} | {cell(cu)} | {cell(tr)} | "
                     f"{ratio(cu, tr)} | {cell(tl_)} | {ratio(tr, tl_)} | {cell(tc)} |")
    lines += ["", "µs per time step of the whole stack (p50, p20-p80), layer 0's input projection included; "
              "\"one launch / per layer\" is issue 16's ratio (first measured on an H200: 0.53x / 0.54x forward, 0.57x "
              "fwd+bwd, uni / bi); \"counters\": the stack's exchanges through its epoch counters instead of polled."]
    return "\n".join(lines) + "\n"


# ---- host time, quick, profile -----------------------------------------------------------------
def step_host(ctx: Ctx) -> list[dict]:
    from . import host_overhead
    backends = ["reference", "triton"] if ctx.dry else ["cudnn", "reference", "triton", "numba"]
    rows = host_overhead.run(backends, device=str(ctx.device()), stub=False, calls=2 if ctx.dry else 50,
                             repeats=1 if ctx.dry else 3, variants=("no_grad", "packed") if ctx.dry
                             else host_overhead.VARIANTS, out=log)
    with open(ctx.path("host.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=host_overhead.CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    try:        # where the triton call's host time goes (3.2 ms a call on the H200, 0.13 ms stubbed on a CPU)
        text = host_overhead.profile_calls("triton", ctx.device(), calls=2 if ctx.dry else 20)
        ctx.path("host-profile.txt").write_text(text)
        log(text[:6000])
    except Exception as e:  # noqa: BLE001 - a profile that fails is reported, the step's rows stand
        log(f"host profile failed: {type(e).__name__}: {e}")
    return rows


def step_quick(ctx: Ctx) -> int:
    from .__main__ import main
    return main([*(QUICK_DRY if ctx.dry else QUICK_GPU), "--out", str(ctx.data), "--tag", "session",
                 "--no-progress"])


def step_profile(ctx: Ctx) -> int:
    from .profile import main
    argv = list(PROFILE_DRY if ctx.dry else PROFILE_GPU)
    if ctx.dry:
        argv += ["--out", str(ctx.path("profile.md"))]
    return main(argv)


STEPS = {"versions": step_versions, "warmup": step_warmup, "smoke": step_smoke, "headline": step_headline,
         "stack": step_stack, "host": step_host, "quick": step_quick, "profile": step_profile}
ORDER = ("versions", "warmup", "smoke", "headline", "stack", "host", "quick", "profile")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=[*STEPS, "all"])
    p.add_argument("--dry", action="store_true", default=dry_default(),
                   help="CPU dry run: tiny shapes through the emulators (also LSTM_GPU_SESSION_DRY=1)")
    p.add_argument("--data", type=Path, default=None,
                   help="output folder (default reports/data; dry: $OUT/data or /tmp/gpu-session/data)")
    p.add_argument("--limit", type=float, default=None, help="seconds this step may take (soft deadline)")
    p.add_argument("--backends", default="triton,numba", help="smoke: which kernel backends")
    p.add_argument("--append", action="store_true", help="smoke: append to the smoke CSV (else a new one)")
    p.add_argument("--processes", type=int, default=None, help="warm-up: worker processes")
    args = p.parse_args(argv)
    from .env import prepare_cpu_emulation
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    prepare_cpu_emulation()
    out = Path(os.environ.get("OUT", "/tmp/gpu-session"))
    data = args.data or (out / "data" if args.dry else REPO / "reports" / "data")
    ctx = Ctx(args.dry, data, args.limit, out)
    steps = ORDER if args.step == "all" else (args.step,)
    rc = 0
    for name in steps:
        log(f"--- session step {name}{' (dry run: CPU emulators, tiny shapes)' if args.dry else ''}")
        try:
            if name == "smoke":
                step_smoke(ctx, tuple(b for b in args.backends.split(",") if b), fresh=not args.append)
            elif name == "warmup":
                step_warmup(ctx, args.processes)
            else:
                r = STEPS[name](ctx)
                if isinstance(r, int) and r:
                    rc = r
        except Exception:  # noqa: BLE001 - report and go on to the next step (in "all")
            traceback.print_exc()
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
