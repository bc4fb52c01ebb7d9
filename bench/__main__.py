"""``python -m bench`` (or ``lstm-gpu-bench``): sweep, gate, time, write CSV + env JSON, plot.

    python -m bench --quick                     # a few minutes on an H100
    python -m bench --batch 16 --hidden 768 --seq-len 1024 --dtype fp16 --mode fwd,fwd+bwd
    python -m bench                             # without a GPU: a tiny CPU-emulation sweep (NOT GPU timings)

Every axis takes a comma list. Without CUDA the kernel backends run emulated (TRITON_INTERPRET=1,
NUMBA_ENABLE_CUDASIM=1 are set here before triton/numba are imported) and the default sweep shrinks to
B in {1,2}, H in {8,16}, T in {4}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FULL = dict(batch="1,2,4,8,16,32,64,128,256", hidden="128,256,512,768,1024,1536,2048", seq_len="64,256,1024,4096",
            dtype="fp32-ieee,fp32-tf32,fp16,bf16", mode="fwd,fwd+bwd")
# --quick: includes the published point (B=16, T=1024, H=768) and both cuDNN regimes for fp16
# (B=16/64 with H multiple of 128 -> PERSIST_STATIC; B=1 -> STANDARD); no torch.compile (compile time)
QUICK = dict(batch="1,16,64", hidden="256,768,1024", seq_len="1024", dtype="fp32-tf32,fp16,bf16",
             mode="fwd,fwd+bwd")
CPU = dict(batch="1,2", hidden="8,16", seq_len="4", dtype="fp32-ieee", mode="fwd,fwd+bwd")


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def _strs(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _bools(s: str) -> list[bool]:
    table = {"0": False, "false": False, "no": False, "uni": False, "1": True, "true": True, "yes": True, "bi": True}
    try:
        return [table[v.lower()] for v in _strs(s)]
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"bidirectional values are true/false, got {e.args[0]!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    axes = p.add_argument_group("sweep axes (comma lists; default: the full sweep on GPU, a tiny one on CPU)")
    axes.add_argument("--batch", "-B")
    axes.add_argument("--hidden", "-H")
    axes.add_argument("--seq-len", "-T")
    axes.add_argument("--dtype", help="fp32-ieee, fp32-tf32, fp16, bf16")
    axes.add_argument("--mode", help="fwd, fwd+bwd")
    axes.add_argument("--layers", default="1")
    axes.add_argument("--bidirectional", default="false", help="comma list of true/false")
    axes.add_argument("--input-size", type=int, default=0, help="input features (default: = hidden)")
    axes.add_argument("--providers", help="triton,numba,cudnn,eager,compiled,flashrnn,reference "
                                          "(default: all that apply to the device)")
    p.add_argument("--quick", action="store_true", help="small GPU preset (a few minutes on an H100)")
    p.add_argument("--out", type=Path, default=Path("reports/data"), help="CSV + JSON folder (default reports/data)")
    p.add_argument("--tag", default="", help="appended to the output file names")
    p.add_argument("--gate-max-steps", type=int, default=None,
                   help="the correctness gate runs at min(seq_len, this) steps (default 1024; --quick 256)")
    p.add_argument("--no-floor", action="store_true", help="skip the barrier-floor microbenchmark")
    p.add_argument("--floor-steps", type=int, default=None, help="steps per floor launch (GPU 1024, CPU 4)")
    p.add_argument("--floor-programs", type=int, default=0, help="floor grid size (default: as the LSTM needs)")
    t = p.add_argument_group("timing")
    t.add_argument("--warmup-ms", type=float, default=None)
    t.add_argument("--rep-ms", type=float, default=None)
    t.add_argument("--min-reps", type=int, default=None)
    t.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--no-plots", action="store_true", help="do not regenerate PNGs after the sweep")
    p.add_argument("--plots-dir", type=Path, default=None,
                   help="PNG folder (default reports/plots; CPU runs: next to the CSV, cpu- prefixed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # before anything imports triton or numba
    from .env import on_gpu, prepare_cpu_emulation
    for w in prepare_cpu_emulation():
        print(f"warning: {w}", file=sys.stderr)
    args = parser().parse_args(argv)

    from .providers import DTYPES, MODES, PROVIDERS, default_providers
    from .sweep import SweepConfig, run
    from .timing import TimingConfig

    gpu = on_gpu()
    preset = FULL if gpu else CPU
    if args.quick:
        preset = QUICK if gpu else CPU
    axis = {k: getattr(args, k) or v for k, v in preset.items()}
    dtypes, modes = _strs(axis["dtype"]), _strs(axis["mode"])
    for d in dtypes:
        if d not in DTYPES:
            parser().error(f"unknown dtype {d!r} (choose from {', '.join(DTYPES)})")
    for m in modes:
        if m not in MODES:
            parser().error(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    providers = _strs(args.providers) if args.providers else default_providers(gpu)
    if args.quick and not args.providers and gpu:
        providers = [p for p in providers if p != "compiled"]
    for p in providers:
        if p not in PROVIDERS:
            parser().error(f"unknown provider {p!r} (choose from {', '.join(PROVIDERS)})")

    if gpu:
        timing = TimingConfig(warmup_ms=25.0, rep_ms=50.0 if args.quick else 100.0)
    else:   # CPU emulation is slow: a handful of samples is plenty for plumbing
        timing = TimingConfig(warmup_ms=0.0, rep_ms=0.0, min_reps=3, min_warmup=1, budget_ms=5_000.0)
    for name in ("warmup_ms", "rep_ms", "min_reps", "max_reps"):
        if getattr(args, name) is not None:
            setattr(timing, name, getattr(args, name))

    cfg = SweepConfig(batch=_ints(axis["batch"]), hidden=_ints(axis["hidden"]), seq_len=_ints(axis["seq_len"]),
                      dtypes=dtypes, modes=modes, providers=providers, layers=_ints(args.layers),
                      bidirectional=_bools(args.bidirectional), input_size=args.input_size, out=args.out,
                      tag=args.tag, gate_max_steps=args.gate_max_steps or (256 if args.quick else 1024),
                      floor=not args.no_floor,
                      floor_steps=args.floor_steps or (1024 if gpu else 4), floor_programs=args.floor_programs,
                      timing=timing, seed=args.seed, progress=not args.no_progress)
    print(f"sweep: {cfg.n_cases()} cases; providers {', '.join(providers)}", flush=True)
    csv_path, _ = run(cfg, argv)
    if not args.no_plots:
        try:
            from .plot import plot_files
        except ImportError as e:   # e.g. no matplotlib on the GPU machine: plot the CSV elsewhere
            print(f"plots skipped ({e}); run `python -m bench.plot {csv_path}` where matplotlib is installed")
        else:
            for png in plot_files([csv_path], args.plots_dir):
                print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
