"""Why a warp of the recurrence waits: Nsight Compute's stall reasons for the headline forward, ours and cuDNN's.

The first GPU run (H200, 2026-11-28) measured B16 H768 fp16 at 3.21 µs a step where the static model, counting
issue slots, said 1.21; a fitted cycles-per-instruction (bench/model_fit.py) closes most of that but says nothing
of what the warps wait for. ncu's warp-state sampling does: per issued instruction, how many cycles warps spent
stalled on each reason (long_scoreboard: L1TEX/L2/DRAM data; short_scoreboard: shared memory, MUFU; wait: fixed
latency dependencies; barrier: bar.sync; membar: fences; math_pipe_throttle, mio_throttle, ...).

    python -m bench.stalls              GPU with ncu: a table per kernel, also written to
                                        reports/data/gpu-<gpu>-stalls.md
    python -m bench.stalls --dry        no GPU: says so (the device session's plumbing)
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

PREFIX, SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
METRICS = (f"regex:{PREFIX}.*_per_issue_active\\.ratio", "smsp__inst_executed.sum", "gpu__time_duration.sum")
# (provider, the recurrence kernel's name as ncu's -k regex): one forward of the headline shape, T = 256
CASES = (("triton", "_lstm_fwd_kernel"), ("cudnn", "lstm"))
SHAPE = (16, 768, 256, "fp16")


def parse(text: str) -> dict:
    """ncu ``--csv --page raw`` output -> {stall reason: cycles per issued instruction, plus the extra metrics}
    of its first kernel row (the units row skipped)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        out = {}
        for k, v in row.items():
            if not k or not (k.startswith(PREFIX) or k in METRICS):
                continue
            try:
                value = float(str(v).replace(",", ""))
            except ValueError:
                break           # the units row
            out[k[len(PREFIX):-len(SUFFIX)] if k.startswith(PREFIX) else k] = value
        else:
            if out:
                out["kernel"] = row.get("Kernel Name", "")
                return out
    return {}


def measure(provider: str, kernel: str) -> dict | str:
    B, H, T, dtype = SHAPE
    cmd = ["ncu", "--nvtx", "--nvtx-include", "bench_ncu/", "-k", f"regex:{kernel}", "-c", "1", "--metrics",
           ",".join(METRICS), "--csv", "--page", "raw", sys.executable, "-m", "bench.profile", "--ncu-child",
           f"{provider},{B},{H},{T},{dtype}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return f"ncu failed: {e}"
    got = parse(out.stdout)
    return got or f"ncu gave no rows (rc {out.returncode}): {(out.stderr or out.stdout)[-300:]}"


def table(results: dict) -> str:
    reasons = sorted({k for r in results.values() if isinstance(r, dict) for k in r
                      if k not in METRICS and k != "kernel"},
                     key=lambda k: -max(r.get(k, 0) for r in results.values() if isinstance(r, dict)))
    names = list(results)
    lines = ["| stall reason (cycles per issued instruction) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for k in reasons:
        lines.append(f"| {k} | " + " | ".join(f"{r.get(k, 0):.2f}" if isinstance(r, dict) else "" for r in
                                             results.values()) + " |")
    for k in METRICS[1:]:
        lines.append(f"| {k} | " + " | ".join(f"{r.get(k, 0):,.0f}" if isinstance(r, dict) else "" for r in
                                             results.values()) + " |")
    lines.append("| kernel | " + " | ".join(r.get("kernel", "")[:40] if isinstance(r, dict) else r[:120]
                                          for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args(argv)
    import torch
    if args.dry or not torch.cuda.is_available() or shutil.which("ncu") is None:
        print("stalls: not measured (" + ("--dry" if args.dry else "no GPU" if not torch.cuda.is_available()
                                          else "ncu not on PATH") + ")")
        return 0
    from . import env
    results = {p: measure(p, k) for p, k in CASES}
    B, H, T, dtype = SHAPE
    text = (f"# Stall reasons, {env.gpu_name()}: one forward, B{B} H{H} T{T} {dtype} (ncu warp-state sampling)\n\n"
            + table(results) + "\n")
    print(text)
    path = Path("reports") / "data" / f"gpu-{env.gpu_name().lower().replace(' ', '-')}-stalls.md"
    path.write_text(text)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
