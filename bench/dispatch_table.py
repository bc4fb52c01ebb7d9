"""``python -m bench.dispatch_table``: build lstm_gpu/dispatch_table.json, the table ``backend="auto"``
consults on a GPU, from the benchmark's GPU measurements (reports/data/gpu-*.csv).

The rule, for each (gpu, dtype, batch bucket, hidden bucket, seq_len bucket, layers, bidirectional) with
measurements (buckets: the next power of two at or above the value, lstm_gpu/dispatch.py; layers and
bidirectional exact: a 2-layer stack measured 10x faster than cuDNN, whose stacks run its standard algorithm,
says nothing about one layer, where cuDNN runs persistent: H200, 2026-11-28):

- a measured point is one (batch, hidden, seq_len, layers, bidirectional, input_size, mode) of one CSV
  file where cuDNN's ``time`` row is ok; a kernel is compared with cuDNN only inside the same file;
- a kernel (triton, numba) qualifies when, at EVERY measured point of the bucket, its time is ok (the
  gate passed) and its p50 is below cuDNN's, and both modes (fwd, fwd+bwd) were measured in the bucket;
- of the qualifying kernels the one with the smallest worst ratio (its p50 / cuDNN's p50) wins; where
  none qualifies the row says "cudnn" (measured: cuDNN at least as fast somewhere in the bucket).

So ``auto`` never picks a kernel that any measurement in the bucket showed slower than cuDNN, and picks
nothing at all where nothing was measured. CPU CSVs (reports/data/cpu-*) are never read.

    python -m bench.dispatch_table                        # reports/data/gpu-*.csv -> lstm_gpu/dispatch_table.json
    python -m bench.dispatch_table a.csv b.csv -o table.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GLOB = "reports/data/gpu-*.csv"
DEFAULT_OUT = REPO / "lstm_gpu" / "dispatch_table.json"
KERNELS = ("triton", "numba")
MODES = ("fwd", "fwd+bwd")
RULE = ("a kernel where, at every measured point of the bucket (next power of two of batch, hidden, seq_len; "
        "layers and bidirectional exact), "
        "forward and forward+backward, it passed the gate and its p50 was below cuDNN's in the same run; "
        "else cudnn. No row: no measurement, cudnn.")


def bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _points(paths: list[Path]) -> dict:
    """{(file, gpu, dtype, batch, hidden, seq_len, layers, bidirectional, input_size, mode): {provider: row}}"""
    points: dict = defaultdict(dict)
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("kernel") != "lstm" or r.get("metric") != "time" or r.get("device_kind") != "cuda":
                    continue
                key = (path.name, r["gpu"], r["dtype"], int(r["batch"]), int(r["hidden"]), int(r["seq_len"]),
                       r.get("layers", "1"), r.get("bidirectional", "False"), r.get("input_size", ""), r["mode"])
                points[key][r["provider"]] = r
    return points


def _p50(row: dict | None) -> float | None:
    if row is None or row.get("status") != "ok" or not row.get("p50"):
        return None
    return float(row["p50"])


def build(paths: list[Path]) -> dict:
    """The table (a JSON-ready dict) from these CSV files."""
    buckets: dict = defaultdict(list)       # (gpu, dtype, b, h, t, layers, bidirectional) -> [(point, providers)]
    for key, providers in _points(paths).items():
        cudnn = _p50(providers.get("cudnn"))
        if cudnn is None or cudnn <= 0:
            continue                        # no cuDNN time to compare with: not a measured point
        _, gpu, dtype, b, h, t, layers, bidirectional = key[:8]
        buckets[(gpu, dtype, bucket(b), bucket(h), bucket(t), int(layers), bidirectional == "True")].append(
            (key, providers))
    rows = []
    for (gpu, dtype, b, h, t, layers, bidirectional), pts in sorted(buckets.items()):
        modes = {k[-1] for k, _ in pts}
        best, best_ratio = "cudnn", None
        ratios = {}
        for kernel in KERNELS:
            worst = 0.0
            for _, providers in pts:
                mine, cudnn = _p50(providers.get(kernel)), _p50(providers.get("cudnn"))
                if mine is None:
                    worst = None
                    break
                worst = max(worst, mine / cudnn)
            ratios[kernel] = worst
            if worst is not None and worst < 1.0 and all(m in modes for m in MODES):
                if best_ratio is None or worst < best_ratio:
                    best, best_ratio = kernel, worst
        rows.append(dict(gpu=gpu, dtype=dtype, batch=b, hidden=h, seq_len=t, layers=layers,
                         bidirectional=bidirectional, backend=best,
                         worst_ratio=best_ratio, points=len(pts), modes=sorted(modes),
                         kernel_worst_ratios={k: v for k, v in ratios.items()},
                         sources=sorted({k[0] for k, _ in pts})))
    return {"generated_by": "python -m bench.dispatch_table", "rule": RULE,
            "sources": sorted(p.name for p in paths), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dispatch_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="*", type=Path, help=f"GPU benchmark CSVs (default: {DEFAULT_GLOB})")
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    paths = args.csv or sorted(REPO.glob(DEFAULT_GLOB))
    paths = [q for q in paths if not q.name.startswith("cpu-")]
    table = build(paths)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    kernels = sum(r["backend"] != "cudnn" for r in table["rows"])
    print(f"{args.out}: {len(table['rows'])} measured bucket(s) from {len(paths)} file(s), "
          f"{kernels} pick a kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
