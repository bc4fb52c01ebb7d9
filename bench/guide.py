"""The generated parts of the study guide (kernels/README.md): worked example, static table, line links, figures.

    python -m bench.guide                  # all of it: rewrite the generated blocks and links, redraw figures
    python -m bench.guide example static   # only the blocks computed from lstm_gpu/reference.py and the CSV
    python -m bench.guide links            # re-anchor every code link to the line that now holds its text
    python -m bench.guide split gates      # the figures (gates: trains a small char-LM on CPU, < 2 minutes)
    python -m bench.guide --check          # change nothing; exit 1 and say what is stale (what the test runs)

Supports: CPU only (torch + matplotlib; neither triton nor numba is imported). Tested by tests/test_guide.py:
the worked example recomputed from the reference and checked against autograd, every link, the static
table against reports/data/static-h100.csv, the figures present and small. Known risk: the gates figure
depends on torch's CPU kernels and thread count bit for bit, so a redraw on another machine may differ in
its last pixels; nothing checks its pixels, only that the script runs.

How a line link stays true: the guide writes every link into the code as [`fragment`](file.py#Lnn), where
``fragment`` is a piece of the code on line nn that occurs on no other line of that file. When the file
changes, ``links`` finds the one line that now holds the fragment and rewrites nn; a fragment that is gone
or no longer unique is reported, and the guide's author picks another.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "kernels" / "README.md"
FIGURES = ROOT / "reports" / "guide"
STATIC_CSV = ROOT / "reports" / "data" / "static-h100.csv"
STATIC_BEFORE_CSV = ROOT / "reports" / "data" / "static-h100-before.csv"

# [`fragment`](path.py#L12) or (path.py#L12-L15): the fragment must sit on the first line of the range.
LINK = re.compile(r"\[`(?P<text>[^`]+)`\]\((?P<path>[\w./-]+\.py)#L(?P<line>\d+)(?:-L(?P<end>\d+))?\)")
ANY_LINE_LINK = re.compile(r"\]\([\w./-]+\.py#L\d+")


# ----------------------------------------------------------------------------------------------------
# Line links
# ----------------------------------------------------------------------------------------------------

def _norm(s: str) -> str:
    return " ".join(s.split())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def link_problems(text: str, base: Path = GUIDE.parent) -> list[str]:
    """Every way a code link in ``text`` is wrong: a file that is not there, a line past its end, a line
    that does not hold the fragment, a fragment on several lines (it could not be re-anchored), a .py#L
    link not written as [`fragment`](file#Lnn). Empty when all links are true."""
    problems = []
    spans = [m.span() for m in LINK.finditer(text)]
    for m in ANY_LINE_LINK.finditer(text):
        if not any(a <= m.start() < b for a, b in spans):
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"README line {line}: {text[max(0, m.start() - 40):m.end() + 6]!r}: write a code "
                            "link as [`code fragment`](file.py#Lnn)")
    for m in LINK.finditer(text):
        frag, path = _norm(m["text"]), base / m["path"]
        where = f"[`{m['text']}`]({m['path']}#L{m['line']})"
        if not path.is_file():
            problems.append(f"{where}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            continue
        lines = _lines(path)
        n = int(m["line"])
        holders = [i + 1 for i, ln in enumerate(lines) if frag in _norm(ln)]
        if len(holders) > 1:
            problems.append(f"{where}: the fragment is on lines {holders}: pick a fragment found on one line only")
        if not 1 <= n <= len(lines):
            problems.append(f"{where}: {m['path']} has {len(lines)} lines")
        elif frag not in _norm(lines[n - 1]):
            now = f"now on line {holders[0]}" if len(holders) == 1 else (
                "on no line any more" if not holders else f"on lines {holders}")
            problems.append(f"{where}: line {n} is {lines[n - 1].strip()!r}; the fragment is {now} "
                            f"(python -m bench.guide links re-anchors it)")
    return problems


def relink(text: str, base: Path = GUIDE.parent) -> tuple[str, list[str]]:
    """``text`` with every link's line number moved to the one line that holds its fragment now; and what
    could not be moved (fragment gone or on several lines)."""
    problems = []

    def fix(m):
        path = base / m["path"]
        if not path.is_file():
            problems.append(f"{m['path']}: no such file")
            return m[0]
        holders = [i + 1 for i, ln in enumerate(_lines(path)) if _norm(m["text"]) in _norm(ln)]
        if len(holders) != 1:
            problems.append(f"[`{m['text']}`]({m['path']}): on {len(holders) or 'no'} lines {holders or ''}")
            return m[0]
        n = holders[0]
        end = "" if m["end"] is None else f"-L{n + int(m['end']) - int(m['line'])}"
        return f"[`{m['text']}`]({m['path']}#L{n}{end})"

    return LINK.sub(fix, text), problems


# ----------------------------------------------------------------------------------------------------
# Generated blocks: <!-- BEGIN name ... --> ... <!-- END name -->
# ----------------------------------------------------------------------------------------------------

def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN {name}\b[^>]*-->\n)(.*?)(<!-- END {name} -->)", re.S)


def read_block(text: str, name: str) -> str:
    m = _block(name).search(text)
    if m is None:
        raise ValueError(f"kernels/README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return m[2]


def write_block(text: str, name: str, body: str) -> str:
    read_block(text, name)
    return _block(name).sub(lambda m: m[1] + body + m[3], text, count=1)


# ----------------------------------------------------------------------------------------------------
# The worked example: H = 2, B = 1, T = 3, one input feature, fixed weights, float64
# ----------------------------------------------------------------------------------------------------

def example_inputs() -> dict:
    """The example's numbers, chosen to be followed by hand. Rows of the gate matrices in PyTorch's order
    (i0, i1, f0, f1, g0, g1, o0, o1): unit 0 remembers (f ≈ 0.88) and shows its cell (o ≈ 0.5); unit 1
    remembers too, but its output gate is nearly shut (bias -3: o ≈ 0.05), so a sizeable c hides behind
    a tiny h."""
    f64 = dict(dtype=torch.float64)
    return dict(
        x=torch.tensor([1.0, 0.5, -1.0], **f64),                                         # x_1, x_2, x_3
        w_ih=torch.tensor([[1.0], [0.5], [0.0], [0.0], [1.0], [-1.0], [0.5], [0.0]], **f64),   # [4H, 1]
        b=torch.tensor([0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, -3.0], **f64),                 # b_ih + b_hh
        w_hh=torch.tensor([[0.5, 0.0], [0.0, 0.5], [0.0, 0.0], [0.0, 0.0],
                           [0.5, -0.5], [0.5, 0.5], [0.0, 0.0], [0.0, 0.0]], **f64),      # [4H, H]
    )


def worked_example() -> dict:
    """Forward and backward of the example through lstm_gpu/reference.py. Loss L = Σ_t Σ_j h_t[j]
    (dy = 1 at every step, dh_n = dc_n = 0: what ``y.sum().backward()`` hands the layer).

    Per step (time index 0..2 here, 1..3 in the guide): z, the activated gates, c, h from ``forward``;
    dz from ``backward``; the carries dh, dc INTO each backward step from ``backward`` run on the suffix
    of later steps (its dh0, dc0); dh_t = dh + dy_t and dc_t = dc + dh_t·o·(1 - tanh²c_t) (the guide's
    equations, on the reference's saved tensors)."""
    from lstm_gpu import reference
    p = example_inputs()
    T, H = 3, 2
    gx = (p["x"][:, None] @ p["w_ih"].t() + p["b"])[:, None, :]                # [T, 1, 4H]
    h0 = torch.zeros(1, H, dtype=torch.float64)
    c0 = torch.zeros(1, H, dtype=torch.float64)
    y, h_n, c_n, gates, cells = reference.forward(gx, h0, c0, p["w_hh"])
    dy = torch.ones_like(y)
    zero = torch.zeros(1, H, dtype=torch.float64)
    dgates, dh0, dc0, _ = reference.backward(dy, zero, zero, gates, cells, h0, c0, y, p["w_hh"])
    z = torch.empty(T, 4 * H, dtype=torch.float64)
    dh_in, dc_in = torch.empty(T, H, dtype=torch.float64), torch.empty(T, H, dtype=torch.float64)
    for t in range(T):
        h_prev = h0[0] if t == 0 else y[t - 1, 0]
        z[t] = gx[t, 0] + h_prev @ p["w_hh"].t()
        if t == T - 1:
            dh_in[t], dc_in[t] = zero[0], zero[0]
        else:                                   # backward over steps t+1..T-1 alone: its dh0, dc0
            _, dh, dc, _ = reference.backward(dy[t + 1:], zero, zero, gates[t + 1:], cells[t + 1:], y[t, :],
                                              cells[t], y[t + 1:], p["w_hh"])
            dh_in[t], dc_in[t] = dh[0], dc[0]
    i, f, g, o = gates[:, 0].chunk(4, 1)
    tanh_c = torch.tanh(cells[:, 0])
    dh_t = dh_in + dy[:, 0]
    dc_t = dc_in + dh_t * o * (1 - tanh_c ** 2)
    dw_hh = reference.weight_grad_hh(dgates, y, h0, None, False)
    return dict(inputs=p, gates_x=gx[:, 0], z=z, i=i, f=f, g=g, o=o, c=cells[:, 0], tanh_c=tanh_c, h=y[:, 0],
                h_n=h_n[0], c_n=c_n[0], dh_in=dh_in, dc_in=dc_in, dy=dy[:, 0], dh_t=dh_t, dc_t=dc_t,
                dz=dgates[:, 0], dh_out=dgates[:, 0] @ p["w_hh"], dc_out=dc_t * f, dh0=dh0[0], dc0=dc0[0],
                dw_hh=dw_hh)


def _f(v: float) -> str:
    s = f"{v:+.4f}"
    return "+0.0000" if s == "-0.0000" else s


def _row(name: str, values) -> str:
    return f"| {name} | " + " | ".join(_f(float(v)) for v in values) + " |"


def example_markdown() -> str:
    """The worked-example block of the guide (markdown), every number from ``worked_example``."""
    e = worked_example()
    p = e["inputs"]
    T, H = 3, 2
    out = []
    out.append(f"Inputs: x = ({', '.join(f'{float(v):g}' for v in p['x'])}), one feature per step; "
               "h_0 = c_0 = 0. The parameters, one row per gate row in PyTorch's order (gate, unit):")
    out.append("")
    out += ["| row | W_ih | b = b_ih + b_hh | W_hh (from h[0], h[1]) |", "|---|---|---|---|"]
    for r in range(4 * H):
        name = f"{'ifgo'[r // H]}{r % H}"
        out.append(f"| {name} | {float(p['w_ih'][r, 0]):g} | {float(p['b'][r]):g} | "
                   + ", ".join(f"{float(v):g}" for v in p["w_hh"][r]) + " |")
    out.append("")
    out.append("Forward (z = gates_x + h_{t-1}·W_hhᵀ, then the activations, the cell, the output):")
    out.append("")
    head = "| | " + " | ".join(f"t={t + 1} u{j}" for t in range(T) for j in range(H)) + " |"
    out += [head, "|---" * (T * H + 1) + "|"]
    flat = lambda m: [m[t, j] for t in range(T) for j in range(H)]   # noqa: E731
    out.append("| x_t | " + " | ".join(_f(float(p["x"][t])) for t in range(T) for _ in range(H)) + " |")
    for k, name in enumerate("ifgo"):
        out.append(_row(f"z_{name}", flat(e["z"][:, k * H:(k + 1) * H])))
    for name, sym in (("i", "i = σ(z_i)"), ("f", "f = σ(z_f)"), ("g", "g = tanh(z_g)"), ("o", "o = σ(z_o)")):
        out.append(_row(sym, flat(e[name])))
    out.append(_row("c_t = f⊙c_{t-1} + i⊙g", flat(e["c"])))
    out.append(_row("tanh(c_t)", flat(e["tanh_c"])))
    out.append(_row("**h_t = o⊙tanh(c_t)**", flat(e["h"])))
    out.append("")
    zi, zf, zg, zo = (float(e["z"][0, k * H]) for k in range(4))
    i, f, g, o = (float(e[n][0, 0]) for n in "ifgo")
    c, h = float(e["c"][0, 0]), float(e["h"][0, 0])
    out.append(f"By hand, step 1, unit 0: z_i = 1·{zi:g} + 0 = {zi:g}, so i = σ({zi:g}) = {i:.4f}; f = σ({zf:g}) = "
               f"{f:.4f}; g = tanh({zg:g}) = {g:.4f}; o = σ({zo:g}) = {o:.4f}. c_1 = {f:.4f}·0 + {i:.4f}·{g:.4f} = "
               f"{c:.4f} and h_1 = {o:.4f}·tanh({c:.4f}) = {o:.4f}·{float(e['tanh_c'][0, 0]):.4f} = {h:.4f}.")
    u1 = (float(e["c"][1, 1]), float(e["o"][1, 1]), float(e["h"][1, 1]))
    out.append(f"Unit 1 at step 2: c = {u1[0]:.4f}, but o = {u1[1]:.4f}, so h = {u1[2]:.4f}: the cell holds a "
               "value the output hides.")
    out.append("")
    out.append("Backward, L = Σ_t Σ_j h_t[j] (dy_t = 1 at every step; dh_n = dc_n = 0), walking t = 3, 2, 1:")
    out.append("")
    order = list(reversed(range(T)))
    head = "| | " + " | ".join(f"t={t + 1} u{j}" for t in order for j in range(H)) + " |"
    out += [head, "|---" * (T * H + 1) + "|"]
    rflat = lambda m: [m[t, j] for t in order for j in range(H)]   # noqa: E731
    out.append(_row("dh (carried in)", rflat(e["dh_in"])))
    out.append(_row("dy_t", rflat(e["dy"])))
    out.append(_row("dh_t = dh + dy_t", rflat(e["dh_t"])))
    out.append(_row("dc (carried in)", rflat(e["dc_in"])))
    out.append(_row("dc_t = dc + dh_t⊙o⊙(1-tanh²c_t)", rflat(e["dc_t"])))
    for k, (name, formula) in enumerate((("i", "dc_t⊙g⊙i(1-i)"), ("f", "dc_t⊙c_{t-1}⊙f(1-f)"),
                                         ("g", "dc_t⊙i⊙(1-g²)"), ("o", "dh_t⊙tanh(c_t)⊙o(1-o)"))):
        out.append(_row(f"dz_{name} = {formula}", rflat(e["dz"][:, k * H:(k + 1) * H])))
    out.append(_row("dh out = dz_t·W_hh", rflat(e["dh_out"])))
    out.append(_row("dc out = dc_t⊙f", rflat(e["dc_out"])))
    out.append("")
    out.append(f"dz_f at step 1 is {float(e['dz'][0, H]):g} for both units: c_0 = 0, there was nothing to "
               "forget, so the forget gate's setting did not matter.")
    out.append("")
    dw = "; ".join(", ".join(_f(float(v)) for v in row) for row in e["dw_hh"])
    out.append(f"The carries out of step 1 are the gradients of the initial state: dh_0 = "
               f"({_f(float(e['dh0'][0]))}, {_f(float(e['dh0'][1]))}), dc_0 = ({_f(float(e['dc0'][0]))}, "
               f"{_f(float(e['dc0'][1]))}). The weight gradient is one GEMM after the recurrence, "
               f"dW_hh = Σ_t dz_tᵀ·h_{{t-1}} (`reference.weight_grad_hh`), rows i0 … o1:")
    out.append("")
    out.append(f"    dW_hh = [{dw}]")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------
# The static profiler's table, from the committed CSV (python -m bench.static --csv ... writes it)
# ----------------------------------------------------------------------------------------------------

def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _kernel_row(label: str, r: dict) -> str:
    g = lambda k, d="?": r.get(k) if r.get(k) not in (None, "") else d   # noqa: E731
    us = lambda k: f"{float(g(k, 'nan')):.2f}"                          # noqa: E731
    # tensor cores issue HMMA; tl.dot in IEEE fp32 (FMAs, the reduction inside each thread) no shuffles at all
    path = "tl.dot" if int(g("mma", 0)) else "tl.dot, FMA" if int(g("shfl", 1)) == 0 else "broadcast"
    return (f"| {g('B')}, {g('H')}, {g('dtype')} | {g('direction')} | {label} ({path}) | {g('programs')} × {g('warps')} | "
            f"{g('regs')} / {g('spill_bytes')} | {g('instructions')} | {g('mma')} / {g('mma_chain')} | {g('fma')} | "
            f"{g('mufu')} | {g('shfl')} | {g('bar')} | {float(g('grid_bytes', 'nan')) / 1e6:.2f} | "
            f"{g('sync_round_trips')} + {g('sync_fences')} | **{us('step_us')}** = {us('sync_us')} + "
            f"{us('exchange_us')} + {us('compute_us')} |")


def static_markdown(now: Path = STATIC_CSV, before: Path = STATIC_BEFORE_CSV) -> str:
    """The static profiler's record, now and before the tensor-core redesign, from the committed CSVs
    (``python -m bench.static --csv`` writes them; nothing is compiled here)."""
    rows, old = _read_csv(now), (_read_csv(before) if before.is_file() else [])
    key = lambda r: (r.get("B"), r.get("H"), r.get("T"), r.get("dtype"), r.get("direction"))   # noqa: E731
    old_by = {key(r): r for r in old}
    out = [f"Per kernel and step, one warp's view of the time loop (`{now.relative_to(ROOT)}`"
           + (f"; before: `{before.relative_to(ROOT)}`, the kernels before the tensor-core redesign, read by "
              "the same profiler" if old else "") + "). T = 1024 throughout. MODELED FROM sm_90 CODE, NOT "
           "MEASURED; the model's parameters are assumptions (`python -m bench.static` prints them).", "",
           "| B, H, dtype | kernel | code | programs × warps | regs / spill B | instructions | HMMA / chain | "
           "FMA-class | MUFU | SHFL | BAR | L2 MB / step | sync trips + fences | modeled µs/step = sync + "
           "exchange + compute |", "|" + "---|" * 14]
    for r in rows:
        if key(r) in old_by:
            out.append(_kernel_row("before", old_by[key(r)]))
        out.append(_kernel_row("now", r))
    pair = next(((old_by[key(r)], r) for r in rows if key(r) in old_by), None)
    if pair is not None:
        a, b = pair
        out += ["", f"In one line, B{b['B']} H{b['H']} {b['dtype']} {b['direction']}, per warp and step: "
                f"{a['instructions']} → {b['instructions']} instructions, {a['shfl']} → {b['shfl']} shuffles, "
                f"{a['mma']} → {b['mma']} HMMA (longest dependent chain {b['mma_chain']}), "
                f"{a['sync_round_trips']} → {b['sync_round_trips']} serial L2 round trips and {a['sync_fences']} → "
                f"{b['sync_fences']} fences in the synchronisation; modeled {float(a['step_us']):.2f} → "
                f"{float(b['step_us']):.2f} µs per step (not measured)."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------
# Figures (PNG, committed under reports/guide/)
# ----------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_work_split(out: Path) -> Path:
    """Which program owns what: W_hh's rows (forward) and columns (backward) coloured by program, for a toy
    H = 8 split over 4 programs of HT = 2 units; and one step of the grid in time."""
    import numpy as np
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle
    H, HT = 8, 2
    NP = H // HT
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    cmap = ListedColormap(colours)
    owner = np.arange(H) // HT                                   # program of each hidden unit
    rows = np.repeat(np.tile(owner, 4)[:, None], H, 1)          # forward: row g·H + u belongs to owner[u]
    cols = np.repeat(owner[None, :], 4 * H, 0)                  # backward: column u belongs to owner[u]
    fig = plt.figure(figsize=(12, 5.6))
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 2.2], wspace=0.3, left=0.06, right=0.98, top=0.84, bottom=0.2)
    for k, (mat, title, xl) in enumerate((
            (rows, "forward: program p keeps the ROWS\nW_hh[g·H + u, :] of its units u", "k (the h_{t-1} it multiplies)"),
            (cols, "backward: program p keeps the COLUMNS\nW_hh[:, u] of its units u", "u (the unit it belongs to)"))):
        ax = fig.add_subplot(gs[k])
        ax.imshow(mat, cmap=cmap, vmin=-0.5, vmax=NP - 0.5, aspect="auto", interpolation="nearest")
        for g in range(1, 4):
            ax.axhline(g * H - 0.5, color="white", lw=3)
        ax.set_yticks([g * H + (H - 1) / 2 for g in range(4)], [f"gate {n}\nrows {g * H}..{g * H + H - 1}"
                                                                for g, n in enumerate("ifgo")], fontsize=8)
        ax.set_xticks(range(H), [str(u) for u in range(H)], fontsize=8)
        ax.set_xlabel(f"column {xl}", fontsize=8)
        ax.set_title(title + "\n(W_hh is [4H × H] = [32 × 8])", fontsize=9)
    handles = [Rectangle((0, 0), 1, 1, color=colours[p]) for p in range(NP)]
    fig.legend(handles, [f"program p{p}: units {p * HT}..{p * HT + HT - 1}" for p in range(NP)],
               loc="lower left", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.04, 0.0))
    ax = fig.add_subplot(gs[2])
    ax.set_xlim(-0.6, 11.5)
    ax.set_ylim(-0.7, NP + 1.4)
    ax.invert_yaxis()
    ax.axis("off")
    ax.set_title("one forward step t of the grid, per program (time →)", fontsize=9)
    phases = [("1", 2.0), ("2", 2.4), ("3", 1.8), ("4", 1.2)]
    speed = [1.0, 1.12, 0.95, 1.2]                               # programs run at slightly different speeds
    ends = []
    for p in range(NP):
        x = 0.0
        for name, wdt in phases:
            wdt *= speed[p]
            ax.add_patch(Rectangle((x, p - 0.35), wdt, 0.7, color=colours[p], alpha=0.45 if name == "1" else 0.9))
            ax.text(x + wdt / 2, p, name, ha="center", va="center", fontsize=9, color="white", weight="bold")
            x += wdt
        ends.append(x)
        ax.text(x + 0.05, p - 0.2, "arrive", fontsize=7)
        ax.text(-0.15, p, f"p{p}", ha="right", va="center", fontsize=8)
    bar = max(ends) + 0.9
    for p in range(NP):
        ax.plot([ends[p] + 0.6, bar], [p, p], color="grey", lw=1, ls=":")
    ax.plot([bar, bar], [-0.6, NP - 0.5], color="black", lw=2)
    ax.text(bar + 0.1, -0.35, "last arrival:\ncounter =\nn·(s+1);\nstep t+1\nmay read y[t]", fontsize=7, va="top")
    ax.text(-0.6, NP + 0.05, "1  read ALL of h_{t-1} from y[t-1] (loads that bypass L1: .cg, from L2)\n"
            "2  four gate products h_{t-1}·W_gateᵀ for its own units (tensor cores, W_hh on chip)\n"
            "3  σ, tanh, c_t, h_t for its own units: needs nothing from the other programs\n"
            "4  store its slice of h_t into y[t]; arrive (one release atomic, no wait); poll until all arrived",
            fontsize=8, va="top")
    fig.suptitle("The work split: program p owns hidden units [p·HT, (p+1)·HT) in all four gates "
                 "(toy sizes: H = 8, HT = 2, 4 programs)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


SENTENCE = "Beautiful is better than ugly."


def train_small_charlm(steps: int = 300, hidden: int = 32, seed: int = 0, lr: float = 3e-3):
    """A one-layer char-LM (bench/train_charlm.py's model) trained on the Zen of Python, on CPU with
    torch.nn.LSTM; returns (model, vocab, final loss). About a minute on one core."""
    from torch import nn

    from .train_charlm import CharLM, batches, zen_of_python
    with contextlib.redirect_stdout(io.StringIO()):      # ``import this`` prints the Zen
        text = zen_of_python()
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(ch) for ch in text])
    torch.manual_seed(seed)
    model = CharLM(len(vocab), hidden, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = None
    for x, target in batches(data, steps, 32, 64, seed):
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, vocab, float(loss.detach())


def gate_activity(model, vocab, sentence: str = SENTENCE) -> dict:
    """The trained layer run over ``sentence`` by lstm_gpu/reference.py: its activated gates, c and h
    per character ([T, H] each)."""
    from lstm_gpu import reference
    rnn = model.rnn
    with torch.no_grad():
        x = model.embed(torch.tensor([vocab.index(ch) for ch in sentence]))              # [T, E]
        gx = (x @ rnn.weight_ih_l0.t() + rnn.bias_ih_l0 + rnn.bias_hh_l0)[:, None, :]     # [T, 1, 4H]
        H = rnn.hidden_size
        zero = torch.zeros(1, H)
        y, _, _, gates, cells = reference.forward(gx, zero, zero, rnn.weight_hh_l0)
    i, f, g, o = gates[:, 0].chunk(4, 1)
    return dict(i=i, f=f, g=g, o=o, c=cells[:, 0], h=y[:, 0])


def draw_gates(out: Path, steps: int = 300) -> Path:
    """Heat maps of i, f, g, o, c, h (unit × character) for a real sentence through a briefly trained
    char-LM, and one unit's c, o and h as lines: the cell that the output gate hides."""
    torch.set_num_threads(1)
    model, vocab, loss = train_small_charlm(steps)
    act = gate_activity(model, vocab)
    plt = _plt()
    T = len(SENTENCE)
    fig = plt.figure(figsize=(12, 8.4))
    gs = fig.add_gridspec(3, 3, height_ratios=[1, 1, 0.8], hspace=0.45, wspace=0.28, left=0.06, right=0.97)
    panels = [("i", "input gate i = σ(z_i)", "viridis", (0, 1)), ("f", "forget gate f = σ(z_f)", "viridis", (0, 1)),
              ("o", "output gate o = σ(z_o)", "viridis", (0, 1)), ("g", "candidate g = tanh(z_g)", "RdBu_r", (-1, 1)),
              ("c", "cell state c_t (unbounded)", "RdBu_r", None), ("h", "hidden state h_t = o⊙tanh(c_t)", "RdBu_r", (-1, 1))]
    labels = [ch if ch != " " else "␣" for ch in SENTENCE]
    for k, (key, title, cmap, lim) in enumerate(panels):
        ax = fig.add_subplot(gs[k // 3, k % 3])
        v = act[key].t().numpy()                                     # [H, T]
        if lim is None:
            m = float(abs(v).max())
            lim = (-m, m)
        im = ax.imshow(v, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(T), labels, fontsize=6)
        ax.set_ylabel("hidden unit" if k % 3 == 0 else "", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    c, h, o = act["c"], act["h"], act["o"]
    counter = int(torch.argmax(c.abs().max(0).values))                       # the largest cell
    hidden = int(torch.argmax((torch.tanh(c).abs() - h.abs()).max(0).values))  # the cell o hides most
    for k, (unit, what) in enumerate(((counter, "the largest |c|: the cell is unbounded, h = o⊙tanh(c) is not"),
                                      (hidden, "the largest |tanh c| - |h|: a small o hides the cell"))):
        ax = fig.add_subplot(gs[2, 0:2] if k == 0 else gs[2, 2])
        ax.plot(c[:, unit], label="c_t", lw=2)
        ax.plot(o[:, unit], label="o_t", lw=1.2, ls="--")
        ax.plot(h[:, unit], label="h_t", lw=2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(range(T), labels, fontsize=7)
        ax.set_xlim(-0.5, T - 0.5)
        ax.legend(fontsize=7, loc="best", ncol=3)
        ax.set_title(f"unit {unit}: {what}", fontsize=8)
    fig.suptitle(f"Gates at work: a 1-layer char-LM (H = {c.shape[1]}, bench/train_charlm.py's model) trained "
                 f"{steps} steps on the Zen of Python on CPU (loss {loss:.2f} nats/char),\nrun over "
                 f"\"{SENTENCE}\" by lstm_gpu/reference.py", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


FIGURE_FILES = {"split": "work-split.png", "gates": "gates.png"}


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def stale(text: str) -> list[str]:
    """What in the guide's text is out of date: generated blocks, links, missing figures."""
    out = []
    if read_block(text, "example") != example_markdown():
        out.append("the worked example differs from what lstm_gpu/reference.py computes (python -m bench.guide example)")
    if read_block(text, "static") != static_markdown():
        out.append(f"the static table differs from {STATIC_CSV.relative_to(ROOT)} (python -m bench.guide static)")
    out += link_problems(text)
    out += [f"missing figure reports/guide/{name} (python -m bench.guide {what})"
            for what, name in FIGURE_FILES.items() if not (FIGURES / name).is_file()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.guide", description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", choices=["example", "static", "links", "split", "gates", []],
                    help="what to regenerate (default: all)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale")
    ap.add_argument("--steps", type=int, default=300, help="training steps for the gates figure")
    args = ap.parse_args(argv)
    text = GUIDE.read_text()
    if args.check:
        problems = stale(text)
        for p in problems:
            print(p)
        return 1 if problems else 0
    parts = args.parts or ["example", "static", "links", "split", "gates"]
    if "example" in parts:
        text = write_block(text, "example", example_markdown())
    if "static" in parts:
        text = write_block(text, "static", static_markdown())
    if "links" in parts:
        text, problems = relink(text)
        for p in problems:
            print("cannot re-anchor:", p)
    GUIDE.write_text(text)
    if "split" in parts:
        print("wrote", draw_work_split(FIGURES / FIGURE_FILES["split"]).relative_to(ROOT))
    if "gates" in parts:
        print("wrote", draw_gates(FIGURES / FIGURE_FILES["gates"], args.steps).relative_to(ROOT))
    left = link_problems(text)
    for p in left:
        print("link:", p)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
