"""``python -m bench.profile``: where the time of one LSTM call goes, for a few representative shapes.

For cuDNN and our backends (reference too on CPU), one training forward and one backward are profiled
separately with torch.profiler, and every GPU kernel (on CPU: every aten op, by self time) is put in a
bucket:
    recurrence      launched >= T times per call (a per-step launch: cuDNN STANDARD's step GEMMs, an
                    eager loop), or a recurrent kernel by name (our persistent kernels, cuDNN RNN kernels)
    input GEMM      a GEMM launched < T times during forward (x . W_ih^T for all steps at once)
    grad GEMMs      a GEMM launched < T times during backward (dW_ih, dW_hh, dx)
    other           everything else (bias adds, copies, memsets, casts)
The bucketing is by name and launch count, not by call stack: read it as an estimate; the kernel list
under the table says exactly what went where.

With ``ncu`` on PATH (and a GPU), each forward is also run once under Nsight Compute inside an NVTX
range and DRAM and L2 bytes are reported per time step, next to the bytes of W_hh: DRAM bytes per step
well below W_hh's size is the evidence that the weights stay on chip.

Writes a markdown report: reports/profile-<gpu>.md (GPU) or reports/data/cpu-profile-<time>.md (CPU,
gitignored; NOT GPU timings).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

GEMM = re.compile(r"gemm|xmma|cutlass|cublas|nvjet|wgmma|s16816|s1688|hmma|aten::(addmm|mm|bmm|matmul|linear)$",
                  re.IGNORECASE)
RECURRENT = re.compile(r"lstm|rnn|persist|_lstm_(fwd|bwd)_kernel", re.IGNORECASE)
GPU_SHAPES = [(16, 768, 1024), (64, 256, 1024), (1, 1024, 1024), (128, 1024, 256)]
CPU_SHAPES = [(2, 16, 4)]
NVTX_RANGE = "bench_ncu"


@dataclass
class Split:
    launches: int = 0
    buckets: dict = field(default_factory=lambda: defaultdict(float))     # bucket -> us
    kernels: list = field(default_factory=list)                           # (name, count, us, bucket)


def bucket(name: str, count: int, steps: int, phase: str) -> str:
    if count >= steps or RECURRENT.search(name):
        return "recurrence"
    if GEMM.search(name):
        return "input GEMM" if phase == "fwd" else "grad GEMMs"
    return "other"


def _split(prof, steps: int, phase: str, gpu: bool) -> Split:
    from torch.autograd import DeviceType
    agg: dict[str, list] = defaultdict(lambda: [0, 0.0])
    if gpu:
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                agg[e.name][0] += 1
                agg[e.name][1] += e.time_range.elapsed_us()
    else:
        for e in prof.events():
            if e.device_type == DeviceType.CPU and not e.is_user_annotation:
                agg[e.name][0] += 1
                agg[e.name][1] += e.self_cpu_time_total
    s = Split()
    for name, (count, us) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        b = bucket(name, count, steps, phase)
        s.buckets[b] += us
        s.kernels.append((name, count, us, b))
        if gpu:
            s.launches += count
    return s


def profile_case(provider: str, B: int, H: int, T: int, dtype_name: str, device) -> tuple[Split, Split]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .providers import DTYPES, PROVIDERS, Shape, shared_weights
    shape = Shape(B, H, T)
    dtype = DTYPES[dtype_name]
    prep = PROVIDERS[provider](shape, dtype, shared_weights(shape), device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(T, B, H, generator=g, device=device).to(dtype).requires_grad_()
    dy = torch.randn(T, B, H, generator=g, device=device).to(dtype)
    with prep.around():                                  # a switched provider's variant, forward and backward
        for _ in range(2):                               # warm-up: compilation, autotuning, cuDNN plans
            y, _ = prep.forward(x)
            torch.autograd.backward(y, dy)
        gpu = device.type == "cuda"
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        sync()
        with profile(activities=acts) as p_fwd:
            y, _ = prep.forward(x)
            sync()
        with profile(activities=acts) as p_bwd:
            torch.autograd.backward(y, dy)
            sync()
    return _split(p_fwd, T, "fwd", gpu), _split(p_bwd, T, "bwd", gpu)


# ---- ncu ---------------------------------------------------------------------------------------
NCU_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_bytes.sum", "gpu__time_duration.sum")


def ncu_child(spec: str) -> None:
    """Run in the profiled process: warm up, then ONE forward inside the NVTX range ncu filters on."""
    import torch

    from .providers import DTYPES, PROVIDERS, Shape, shared_weights
    provider, B, H, T, dtype_name = spec.split(",")
    shape = Shape(int(B), int(H), int(T))
    dtype = DTYPES[dtype_name]
    prep = PROVIDERS[provider](shape, dtype, shared_weights(shape), torch.device("cuda"))
    x = torch.randn(shape.seq_len, shape.batch, shape.hidden, device="cuda").to(dtype)
    with torch.no_grad(), prep.around():
        for _ in range(2):
            prep.forward(x)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push(NVTX_RANGE)
        prep.forward(x)
        torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()


def ncu_bytes(provider: str, B: int, H: int, T: int, dtype_name: str) -> dict | str:
    """{metric: total over the kernels of one forward} from ncu, or why it could not be had."""
    cmd = ["ncu", "--nvtx", "--nvtx-include", f"{NVTX_RANGE}/", "--metrics", ",".join(NCU_METRICS), "--csv",
           "--page", "raw", sys.executable, "-m", "bench.profile", "--ncu-child", f"{provider},{B},{H},{T},{dtype_name}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except Exception as e:  # noqa: BLE001
        return f"ncu failed: {e}"
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('"')]
    if not lines:
        return f"ncu gave no rows (rc {out.returncode}): {(out.stderr or out.stdout)[-300:]}"
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    totals = dict.fromkeys(NCU_METRICS, 0.0)
    for r in rows:
        for m in NCU_METRICS:
            try:
                totals[m] += float(str(r.get(m, "")).replace(",", ""))
            except ValueError:       # the units row
                pass
    totals["kernels"] = sum(1 for r in rows if r.get("Kernel Name") and r.get(NCU_METRICS[0], "").replace(",", "")
                            .replace(".", "").isdigit())
    return totals


# ---- report ------------------------------------------------------------------------------------
def _us(v: float) -> str:
    return f"{v:,.1f}"


def report(args) -> Path:
    import torch

    from . import env as envmod
    from .providers import DTYPES
    from .sweep import _slug
    env = envmod.collect(["profile", *sys.argv[1:]])
    print(envmod.banner(env), flush=True)
    gpu = env["device_kind"] == "cuda"
    device = torch.device("cuda" if gpu else "cpu")
    envmod.set_fp32_precision(envmod.FP32_MODES.get(args.dtype, "ieee"))
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else (
        GPU_SHAPES if gpu else CPU_SHAPES)
    providers = args.providers.split(",") if args.providers else (
        ["cudnn", "triton", "numba"] if gpu else ["reference", "cudnn", "triton", "numba"])
    ncu = shutil.which("ncu") if gpu and not args.no_ncu else None

    lines = [f"# Where the time goes: {env['gpu']}", ""]
    if not gpu:
        lines += ["**CPU run - NOT GPU timings.** Kernel backends ran emulated; times are CPU self time of aten "
                  "ops, launches are not counted; provider `cudnn` is torch's ATen CPU LSTM, not cuDNN. This file "
                  "only shows the report's shape.", ""]
    lines += [f"torch {env['torch']}, CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, triton {env['triton']}, "
              f"numba-cuda {env['numba_cuda']}, driver {env['driver']}; git {env['git_sha'][:12]}"
              f"{' (dirty)' if env['git_dirty'] else ''}; dtype {args.dtype}; {env['timestamp']}", "",
              "One training forward and its backward, profiled separately (torch.profiler). Buckets: see "
              "bench/profile.py (by kernel name and launch count; an estimate).", "",
              "| provider | B | H | T | phase | launches | launches/step | input GEMM us | recurrence us | "
              "grad GEMMs us | other us | total us |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    details, ncu_lines = [], []
    for (B, H, T) in shapes:
        for prov in providers:
            try:
                fwd, bwd = profile_case(prov, B, H, T, args.dtype, device)
            except Exception as e:  # noqa: BLE001 - unsupported / not implemented / error: say so
                lines.append(f"| {prov} | {B} | {H} | {T} | - | - | - | - | - | - | - | "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:120]} |")
                continue
            for phase, s in (("fwd", fwd), ("bwd", bwd)):
                b = s.buckets
                total = sum(b.values())
                launches = str(s.launches) if gpu else "n/a"
                per_step = f"{s.launches / T:.2f}" if gpu else "n/a"
                lines.append(f"| {prov} | {B} | {H} | {T} | {phase} | {launches} | {per_step} | "
                             f"{_us(b['input GEMM'])} | {_us(b['recurrence'])} | {_us(b['grad GEMMs'])} | "
                             f"{_us(b['other'])} | {_us(total)} |")
                details.append(f"- {prov} B={B} H={H} T={T} {phase}: " + "; ".join(
                    f"`{n[:60]}` x{c} {_us(us)} us [{bk}]" for n, c, us, bk in s.kernels[:8]))
            if ncu:
                res = ncu_bytes(prov, B, H, T, args.dtype)
                w_bytes = 4 * H * H * torch.empty(0, dtype=DTYPES[args.dtype]).element_size()
                if isinstance(res, str):
                    ncu_lines.append(f"| {prov} | {B} | {H} | {T} | {w_bytes / 1e6:.2f} | - | - | - | {res[:150]} |")
                else:
                    dram = (res["dram__bytes_read.sum"] + res["dram__bytes_write.sum"]) / T
                    ncu_lines.append(f"| {prov} | {B} | {H} | {T} | {w_bytes / 1e6:.2f} | {dram / 1e6:.3f} | "
                                     f"{res['lts__t_bytes.sum'] / T / 1e6:.3f} | {res['kernels']} | |")
    lines += ["", "Top kernels/ops per case (name x launches, time, bucket):", "", *details]
    lines += ["", "## DRAM / L2 traffic per time step (Nsight Compute, forward, inference)", ""]
    if ncu_lines:
        lines += ["| provider | B | H | T | W_hh MB | DRAM MB/step | L2 MB/step | kernels | note |",
                  "|---|---|---|---|---|---|---|---|---|", *ncu_lines]
    else:
        lines.append("not measured: " + ("no GPU" if not gpu else "ncu not on PATH" if not args.no_ncu
                                         else "--no-ncu given"))
    if gpu:
        out = args.out or Path("reports") / f"profile-{_slug(env['gpu'])}.md"
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.out or Path("reports/data") / f"cpu-profile-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    from .env import prepare_cpu_emulation
    prepare_cpu_emulation()
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help="comma list of BxHxT (default: a few representative shapes)")
    p.add_argument("--providers", help="default: cudnn,triton,numba (CPU: + reference)")
    p.add_argument("--dtype", default=None, help="fp32-ieee, fp32-tf32, fp16, bf16 (default fp16 on GPU, "
                                                 "fp32-ieee on CPU)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-ncu", action="store_true")
    p.add_argument("--ncu-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ncu_child:
        ncu_child(args.ncu_child)
        return 0
    import torch
    if args.dtype is None:
        args.dtype = "fp16" if torch.cuda.is_available() else "fp32-ieee"
    report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
