"""``python -m bench.plot [csv ...]``: turn benchmark CSVs into PNGs (no pandas needed).

    speedup-<dtype>-<mode>-T<seq_len>.png   cuDNN time / provider time, batch x hidden heatmap per provider
                                             (cells: U unsupported, X incorrect, E error, M out of memory)
    latency-batch-<dtype>-<mode>.png        time per step vs batch (one panel per hidden), p20-p80 bands,
                                             the floor dashed
    latency-seqlen-<dtype>-<mode>.png       time per step vs seq len (one panel per hidden, one batch)
    floor-<dtype>-<mode>.png                every provider as a multiple of the floor, vs batch
    memory-<dtype>-<mode>.png               peak memory vs batch (GPU runs only)

Titles name the GPU and dtype; CSVs from CPU runs are titled "CPU — not GPU timings" and their files
start with "cpu-" (gitignored under reports/data). With no CSV given, the newest one in reports/data.

CPU runs: provider "cudnn" is torch's ATen CPU LSTM and is labelled "torch (ATen CPU)"; no speedup heat
map is drawn (the kernels ran emulated, a few samples each: a ratio of those times means nothing).
"""
from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .providers import label  # noqa: E402

STATUS_MARK = {"unsupported": "U", "incorrect": "X", "error": "E", "oom": "M"}
COLORS = {"triton": "tab:red", "numba": "tab:purple", "cudnn": "tab:blue", "eager": "tab:gray",
          "compiled": "tab:olive", "flashrnn": "tab:green", "reference": "tab:brown", "floor": "black"}


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                for k in ("batch", "hidden", "seq_len", "layers"):
                    r[k] = int(r[k]) if r.get(k) else 0
                for k in ("p50", "p20", "p80"):
                    r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
                rows.append(r)
    return rows


def machine_title(rows: list[dict]) -> str:
    if rows and all(r.get("device_kind") == "cpu" for r in rows):
        return "CPU — not GPU timings"
    gpus = sorted({r["gpu"] for r in rows if r.get("device_kind") != "cpu"})
    return ", ".join(gpus) or "unknown device"


def _variant(r: dict) -> str:
    """Layers / bidirectional, when not the default single unidirectional layer."""
    parts = []
    if r["layers"] != 1:
        parts.append(f"L{r['layers']}")
    if str(r.get("bidirectional")).lower() == "true":
        parts.append("bi")
    return "-".join(parts)


def _name(prefix: str, kind: str, *parts) -> str:
    return "-".join(str(p) for p in (prefix, kind, *parts) if p).replace("+", "") + ".png"


def _provider_order(providers) -> list[str]:
    known = list(COLORS)
    return sorted(providers, key=lambda p: (known.index(p) if p in known else len(known), p))


def _values(rows, metric):
    """{(provider, batch, hidden, seq_len): row} for one metric (ok and not-ok rows alike)."""
    return {(r["provider"], r["batch"], r["hidden"], r["seq_len"]): r for r in rows if r["metric"] == metric}


def plot_speedup(rows, title, out, prefix, dtype, mode, variant) -> list[Path]:
    times = _values(rows, "time")
    written = []
    for T in sorted({k[3] for k in times}):
        batches = sorted({k[1] for k in times if k[3] == T})
        hiddens = sorted({k[2] for k in times if k[3] == T})
        providers = _provider_order({k[0] for k in times if k[3] == T and k[0] != "cudnn"})
        if not providers or not any(("cudnn", b, h, T) in times for b in batches for h in hiddens):
            continue
        fig, axes = plt.subplots(1, len(providers), figsize=(1.0 + 0.75 * len(hiddens) * len(providers) + 1.5,
                                                              1.5 + 0.5 * len(batches)), squeeze=False,
                                 layout="constrained")
        for ax, prov in zip(axes[0], providers):
            grid = np.full((len(batches), len(hiddens)), np.nan)
            for i, b in enumerate(batches):
                for j, h in enumerate(hiddens):
                    ref, r = times.get(("cudnn", b, h, T)), times.get((prov, b, h, T))
                    if r is not None and ref is not None and r["status"] == "ok" and ref["status"] == "ok":
                        grid[i, j] = ref["p50"] / r["p50"]
                    mark = STATUS_MARK.get(r["status"]) if r is not None else None
                    if mark:
                        ax.text(j, i, mark, ha="center", va="center", fontsize=8, color="dimgray")
                    elif not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7)
            lim = max(2.0, float(np.nanmax(np.abs(np.log2(grid))))) if np.isfinite(grid).any() else 2.0
            im = ax.imshow(np.log2(grid), cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(len(hiddens)), [str(h) for h in hiddens], fontsize=7)
            ax.set_yticks(range(len(batches)), [str(b) for b in batches], fontsize=7)
            ax.set_xlabel("hidden")
            ax.set_ylabel("batch")
            ax.set_title(f"{prov} vs cuDNN", fontsize=9)
        fig.colorbar(im, ax=axes[0].tolist(), label="log2 speedup over cuDNN (>0: faster)")
        fig.suptitle(f"{title}\nspeedup over cuDNN (p50), {dtype} {mode}{' ' + variant if variant else ''}, "
                     f"T={T}", fontsize=9)
        path = out / _name(prefix, "speedup", dtype, mode, variant, f"T{T}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _line_panels(rows, metric, x_key, panel_key, fixed_key, fixed_value, ylabel, fig_title, path,
                 floor_rows=None, logy=True) -> Path | None:
    data = [r for r in rows if r["metric"] == metric and r["status"] == "ok" and r[fixed_key] == fixed_value]
    if not data:
        return None
    panels = sorted({r[panel_key] for r in data})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.5, 3.4), squeeze=False,
                             layout="constrained")
    for ax, pv in zip(axes[0], panels):
        by_prov = defaultdict(list)
        for r in data:
            if r[panel_key] == pv:
                by_prov[r["provider"]].append(r)
        for prov in _provider_order(by_prov):
            pts = sorted(by_prov[prov], key=lambda r: r[x_key])
            xs = [r[x_key] for r in pts]
            ax.plot(xs, [r["p50"] for r in pts], "o-", ms=3, label=label(prov, pts[0].get("device_kind", "")),
                    color=COLORS.get(prov))
            ax.fill_between(xs, [r["p20"] for r in pts], [r["p80"] for r in pts], alpha=0.25,
                            color=COLORS.get(prov))
        if floor_rows:
            fl = sorted((r for r in floor_rows if r[panel_key] == pv and r["status"] == "ok"), key=lambda r: r[x_key])
            if fl:
                ax.plot([r[x_key] for r in fl], [r["p50"] for r in fl], "k--", lw=1, label="floor")
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{panel_key} = {pv}", fontsize=9)
        ax.set_xlabel(x_key.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(fig_title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _pick(values, preferred):
    values = sorted(set(values))
    for p in preferred:
        if p in values:
            return p
    return values[len(values) // 2] if values else None


def plot_group(rows, floor_rows, title, out, prefix, dtype, mode, variant, speedup=True) -> list[Path]:
    written = plot_speedup(rows, title, out, prefix, dtype, mode, variant) if speedup else []
    label = f"{dtype} {mode}{' ' + variant if variant else ''}"
    step_rows = [r for r in rows if r["metric"] == "time_per_step"]
    T = _pick([r["seq_len"] for r in step_rows], (1024, 4096, 256, 64))
    B = _pick([r["batch"] for r in step_rows], (16, 8, 32, 2))
    fl = [dict(r, seq_len=T) for r in floor_rows if r["metric"] == "time_per_step"]
    for p in (
        _line_panels(rows, "time_per_step", "batch", "hidden", "seq_len", T, "time per step (us), p50 [p20-p80]",
                     f"{title}\nper-step latency vs batch, {label}, T={T}",
                     out / _name(prefix, "latency-batch", dtype, mode, variant), floor_rows=fl),
        _line_panels(rows, "time_per_step", "seq_len", "hidden", "batch", B, "time per step (us), p50 [p20-p80]",
                     f"{title}\nper-step latency vs sequence length, {label}, B={B}",
                     out / _name(prefix, "latency-seqlen", dtype, mode, variant)),
        _line_panels(rows, "floor_multiple", "batch", "hidden", "seq_len", T, "multiple of the floor (x)",
                     f"{title}\ntime as a multiple of the barrier+exchange floor, {label}, T={T}",
                     out / _name(prefix, "floor", dtype, mode, variant)),
        _line_panels(rows, "memory", "batch", "hidden", "seq_len", T, "peak memory (MB)",
                     f"{title}\npeak memory, {label}, T={T}", out / _name(prefix, "memory", dtype, mode, variant)),
    ):
        if p is not None:
            written.append(p)
    return written


def plot_files(paths: list[Path], out: Path | None = None) -> list[Path]:
    """Write every plot the CSVs support; returns the PNG paths."""
    rows = read_rows([Path(p) for p in paths])
    if not rows:
        return []
    cpu = all(r.get("device_kind") == "cpu" for r in rows)
    out = Path(out) if out is not None else (Path(paths[0]).parent if cpu else Path("reports/plots"))
    out.mkdir(parents=True, exist_ok=True)
    prefix = "cpu" if cpu else ""
    title = machine_title(rows)
    lstm = [r for r in rows if r["kernel"] == "lstm"]
    floors = [r for r in rows if r["kernel"] == "floor"]
    groups = defaultdict(list)
    for r in lstm:
        groups[(r["dtype"], r["mode"], _variant(r))].append(r)
    if cpu:
        print("speedup heat maps skipped: CPU run (kernels emulated, a few samples each; 'cudnn' is torch's "
              "ATen CPU LSTM): a ratio of these times means nothing")
    written = []
    for (dtype, mode, variant), group in sorted(groups.items()):
        fl = [r for r in floors if r["dtype"] == dtype]
        written += plot_group(group, fl, f"{title} — {dtype}", out, prefix, dtype, mode, variant, speedup=not cpu)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="*", type=Path, help="benchmark CSVs (default: the newest in reports/data)")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG folder (default reports/plots; CPU-only CSVs: next to the CSV, cpu- prefixed)")
    args = p.parse_args(argv)
    paths = args.csv
    if not paths:
        found = sorted(Path("reports/data").glob("*.csv"), key=lambda q: q.stat().st_mtime)
        if not found:
            p.error("no CSV given and none in reports/data")
        paths = [found[-1]]
    for png in plot_files(paths, args.out):
        print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
