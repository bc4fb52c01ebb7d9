"""The sweep: every (dtype, shape, mode, provider) case gated, then timed, into one long-format CSV.

Per case: set the fp32 precision for the dtype, set the provider up (``Unsupported`` / the backend's
NotImplementedError or ValueError -> "unsupported", with the reason), run the correctness gate against
the reference oracle (fail -> "incorrect", no time), then time and measure memory. Rows are written
(and flushed) as each case finishes, so an interrupted run keeps what it measured.

CSV, one row per (case, metric):
    time           ms   the full call (input projection included): forward, or forward + backward
    time_per_step  us   time / seq_len
    floor_multiple x    time / (floor per step x seq_len x recurrent passes), passes = layers x directions
                        (x 2 for fwd+bwd): how many barrier+exchange floors each step costs
    memory         MB   peak allocated during one call (GPU only)
    gate_error     x    worst error / tolerance in the gate (<= 1 passed)
plus kernel="floor" rows: the floor microbenchmark's time_per_step (us) per (batch, hidden, dtype).
Statuses: ok, unsupported, incorrect, error, oom. A non-ok case has empty p50/p20/p80 for its time.
"""
from __future__ import annotations

import csv
import datetime
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import env as envmod
from .gate import GateResult, compare
from .providers import DTYPES, PROVIDERS, Shape, Unsupported, oracle, outputs, shared_weights, timed_call
from .regime import device_props, regime
from .timing import TimingConfig, measure, peak_memory_mb

COLUMNS = ["kernel", "provider", "mode", "dtype", "batch", "hidden", "seq_len", "layers", "bidirectional",
           "input_size", "metric", "unit", "p50", "p20", "p80", "status", "note", "cudnn_regime",
           "fp32_precision", "device_kind", "gpu", "timestamp", "git_sha"]
STATUSES = ("ok", "unsupported", "incorrect", "error", "oom")


@dataclass
class SweepConfig:
    batch: list[int]
    hidden: list[int]
    seq_len: list[int]
    dtypes: list[str]
    modes: list[str]
    providers: list[str]
    layers: list[int] = field(default_factory=lambda: [1])
    bidirectional: list[bool] = field(default_factory=lambda: [False])
    input_size: int = 0                  # 0: same as hidden
    out: Path = Path("reports/data")
    tag: str = ""
    gate_max_steps: int = 1024           # the gate runs at min(seq_len, this) steps
    floor: bool = True
    floor_steps: int = 1024
    floor_programs: int = 0              # 0: as many as the LSTM of that size needs (floor.programs_for)
    timing: TimingConfig = field(default_factory=TimingConfig)
    seed: int = 0
    progress: bool = True

    def shapes(self) -> list[Shape]:
        return [Shape(b, h, t, l, bi, self.input_size) for h, b, t, l, bi in
                itertools.product(self.hidden, self.batch, self.seq_len, self.layers, self.bidirectional)]

    def n_cases(self) -> int:
        return len(self.dtypes) * len(self.shapes()) * len(self.modes) * len(self.providers)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def output_stem(env: dict, tag: str = "") -> str:
    """cpu-<time> for CPU runs (gitignored), gpu-<gpu>-<time> otherwise."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = "cpu" if env["device_kind"] == "cpu" else f"gpu-{_slug(env['gpu'])}"
    return "-".join(p for p in (prefix, stamp, _slug(tag)) if p)


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class _Sink:
    def __init__(self, path: Path):
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=COLUMNS)
        self.w.writeheader()
        self.counts: dict[str, int] = {}

    def write(self, rows: list[dict]) -> None:
        for r in rows:
            self.w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
        self.f.flush()

    def close(self):
        self.f.close()


def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {msg}"[:400]


class Runner:
    """Holds what the cases of one sweep share: device, environment, floors, the current shape's oracle."""

    def __init__(self, cfg: SweepConfig, env: dict, sink: _Sink):
        self.cfg, self.env, self.sink = cfg, env, sink
        self.device = torch.device("cuda" if env["device_kind"] == "cuda" else "cpu")
        self.gpu = self.env["gpu"]
        self.cpu_note = "" if self.device.type == "cuda" else envmod.CPU_NOTE
        self.dev_props = device_props()
        self.floors: dict[tuple, float | None] = {}

    # ---- rows ----
    def base(self, provider: str, mode: str, dtype_name: str, shape: Shape, kernel: str = "lstm") -> dict:
        fp32 = envmod.FP32_MODES.get(dtype_name, "-")
        return dict(kernel=kernel, provider=provider, mode=mode, dtype=dtype_name, batch=shape.batch,
                    hidden=shape.hidden, seq_len=shape.seq_len, layers=shape.layers,
                    bidirectional=shape.bidirectional, input_size=shape.input,
                    cudnn_regime=regime(mode, dtype=dtype_name, batch=shape.batch, hidden=shape.hidden,
                                        seq_len=shape.seq_len, input_size=shape.input, layers=shape.layers,
                                        bidirectional=shape.bidirectional, dev=self.dev_props),
                    fp32_precision=fp32, device_kind=self.device.type, gpu=self.gpu,
                    timestamp=self.env["timestamp"], git_sha=self.env["git_sha"])

    def note(self, *parts: str) -> str:
        return "; ".join(p for p in (self.cpu_note, *parts) if p)

    def status_rows(self, base: dict, status: str, note: str, gate: GateResult | None = None) -> list[dict]:
        rows = [dict(base, metric="time", unit="ms", status=status, note=self.note(note))]
        if gate is not None:
            rows.append(dict(base, metric="gate_error", unit="x", p50=gate.ratio, p20=gate.ratio, p80=gate.ratio,
                             status=status, note=self.note(gate.detail)))
        return rows

    # ---- the floor ----
    def floor_us(self, shape: Shape, dtype_name: str) -> float | None:
        """Floor per step (us) for this batch, hidden and dtype; measured once, rows written then."""
        from . import floor as fl
        dtype = DTYPES[dtype_name]
        key = (shape.batch, shape.hidden, dtype)
        if not self.cfg.floor:
            return None
        if key in self.floors:
            return self.floors[key]
        base = self.base("floor", "fwd", dtype_name, Shape(shape.batch, shape.hidden, self.cfg.floor_steps),
                         kernel="floor")
        base["cudnn_regime"] = ""
        sm = self.env.get("sm_count") or 132
        programs = self.cfg.floor_programs or fl.programs_for(shape.batch, shape.hidden, dtype, sm)
        if fl.interpreted():
            programs = 1
        what = (f"floor: grid barrier + h exchange only, {programs} program(s), {self.cfg.floor_steps} steps, "
                f"barrier {fl.BARRIER}")
        us = None
        try:
            h, ref, timed_out = fl.check_floor(shape.batch, shape.hidden, dtype, self.device, programs)
            gate = compare({"h": h}, {"h": ref}, dtype_name)
            if timed_out:
                rows = self.status_rows(base, "error", f"{what}; barrier timed out (CHECK_TIMEOUT)")
            elif not gate.ok:
                rows = self.status_rows(base, "incorrect", what, gate)
            else:
                h, bar = fl.make_buffers(shape.batch, shape.hidden, self.cfg.floor_steps, dtype, self.device)
                t = measure(lambda: fl.floor_launch(h, bar, programs), self.device, cfg=self.cfg.timing)
                steps = self.cfg.floor_steps
                us = t.p50 * 1e3 / steps
                rows = [dict(base, metric="time_per_step", unit="us", p50=us, p20=t.p20 * 1e3 / steps,
                             p80=t.p80 * 1e3 / steps, status="ok", note=self.note(what, f"{t.samples} samples")),
                        dict(base, metric="gate_error", unit="x", p50=gate.ratio, p20=gate.ratio, p80=gate.ratio,
                             status="ok", note=self.note(gate.detail))]
        except Exception as e:  # noqa: BLE001 - any failure is recorded, the sweep goes on
            status = "oom" if _oom(e) else ("unsupported" if isinstance(e, (NotImplementedError, ValueError))
                                            else "error")
            rows = self.status_rows(base, status, f"{what}; {_reason(e)}")
        self.sink.write(rows)
        self.floors[key] = us
        return us

    # ---- one case ----
    def run_case(self, provider: str, mode: str, dtype_name: str, shape: Shape, inputs: "ShapeInputs") -> list[dict]:
        base = self.base(provider, mode, dtype_name, shape)
        dtype = DTYPES[dtype_name]
        setup = PROVIDERS.get(provider)
        if setup is None:
            return self.status_rows(base, "unsupported", f"unknown provider {provider!r}")
        try:
            prep = setup(shape, dtype, inputs.weights, self.device)
        except (Unsupported, NotImplementedError, ValueError) as e:
            return self.status_rows(base, "unsupported", _reason(e))
        except Exception as e:  # noqa: BLE001
            return self.status_rows(base, "oom" if _oom(e) else "error", f"setup: {_reason(e)}")

        # the gate
        tg = inputs.gate_steps
        gate_note = prep.note if tg == shape.seq_len else f"{prep.note}; gated at T={tg}"
        try:
            got = outputs(prep, inputs.x[:tg], inputs.dy[:tg], mode)
        except (NotImplementedError, ValueError) as e:
            return self.status_rows(base, "unsupported", _reason(e))
        except Exception as e:  # noqa: BLE001
            self._free()
            return self.status_rows(base, "oom" if _oom(e) else "error", f"gate run: {_reason(e)}")
        try:
            ref = inputs.oracle()
        except Exception as e:  # noqa: BLE001
            self._free()
            return self.status_rows(base, "oom" if _oom(e) else "error", f"reference oracle: {_reason(e)}")
        gate = compare(got, {k: v for k, v in ref.items() if k in got or mode == "fwd+bwd"}, dtype_name)
        del got
        if not gate.ok:
            return self.status_rows(base, "incorrect", f"{gate_note}; {gate.detail}", gate)

        # speed, then memory, with the same call
        fn, grads = timed_call(prep, inputs.x, inputs.dy, mode)
        try:
            t = measure(fn, self.device, grads, self.cfg.timing)
            mem = peak_memory_mb(fn, self.device, grads)
        except Exception as e:  # noqa: BLE001
            self._free()
            return self.status_rows(base, "oom" if _oom(e) else "error", f"timed run: {_reason(e)}", gate)
        T = shape.seq_len
        note = self.note(gate_note, f"{t.samples} samples")
        rows = [dict(base, metric="time", unit="ms", p50=t.p50, p20=t.p20, p80=t.p80, status="ok", note=note),
                dict(base, metric="time_per_step", unit="us", p50=t.p50 * 1e3 / T, p20=t.p20 * 1e3 / T,
                     p80=t.p80 * 1e3 / T, status="ok", note=note)]
        floor = self.floor_us(shape, dtype_name)
        if floor:
            passes = shape.layers * shape.directions * (2 if mode == "fwd+bwd" else 1)
            per = floor * T * passes / 1e3        # ms
            rows.append(dict(base, metric="floor_multiple", unit="x", p50=t.p50 / per, p20=t.p20 / per,
                             p80=t.p80 / per, status="ok",
                             note=self.note(f"floor {floor:.4g} us/step x {T} steps x {passes} pass(es)")))
        if mem is not None:
            rows.append(dict(base, metric="memory", unit="MB", p50=mem, p20=mem, p80=mem, status="ok",
                             note=self.note("peak torch.cuda.max_memory_allocated during one call")))
        rows.append(dict(base, metric="gate_error", unit="x", p50=gate.ratio, p20=gate.ratio, p80=gate.ratio,
                         status="ok", note=self.note(gate.detail)))
        return rows

    def _free(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class ShapeInputs:
    """Weights, input, output gradient and (lazily) the oracle for one (shape, dtype)."""

    def __init__(self, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int, gate_max_steps: int):
        self.shape, self.dtype = shape, dtype
        self.weights = shared_weights(shape, seed)
        g = torch.Generator(device=device).manual_seed(seed + 1)
        T, B = shape.seq_len, shape.batch
        self.x = torch.randn(T, B, shape.input, generator=g, device=device).to(dtype)
        self.dy = torch.randn(T, B, shape.hidden * shape.directions, generator=g, device=device).to(dtype)
        self.gate_steps = min(T, gate_max_steps)
        self._oracle = None

    def oracle(self) -> dict:
        if self._oracle is None:
            tg = self.gate_steps
            self._oracle = oracle(self.shape, self.dtype, self.weights, self.x[:tg], self.dy[:tg])
        return self._oracle


def run(cfg: SweepConfig, argv: list[str] | None = None) -> tuple[Path, Path]:
    """Run the sweep; returns (csv path, env json path)."""
    env = envmod.collect(argv)
    print(envmod.banner(env), flush=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(env, cfg.tag)
    csv_path, json_path = cfg.out / f"{stem}.csv", cfg.out / f"{stem}.json"
    env["csv"] = csv_path.name
    env["sweep"] = {"batch": cfg.batch, "hidden": cfg.hidden, "seq_len": cfg.seq_len, "dtypes": cfg.dtypes,
                    "modes": cfg.modes, "providers": cfg.providers, "layers": cfg.layers,
                    "bidirectional": cfg.bidirectional, "input_size": cfg.input_size or "hidden",
                    "gate_max_steps": cfg.gate_max_steps, "floor": cfg.floor, "floor_steps": cfg.floor_steps,
                    "timing": vars(cfg.timing), "seed": cfg.seed}
    saved = envmod.save_fp32_precision()
    env["fp32_precision_by_dtype"] = {}
    for d in cfg.dtypes:       # the flags each dtype's cases run under (16-bit dtypes: ieee, irrelevant)
        envmod.set_fp32_precision(envmod.FP32_MODES.get(d, "ieee"))
        env["fp32_precision_by_dtype"][d] = envmod.fp32_precision_state()
    envmod.restore_fp32_precision(saved)
    json_path.write_text(json.dumps(env, indent=2, default=str))

    sink = _Sink(csv_path)
    runner = Runner(cfg, env, sink)
    saved_precision = envmod.save_fp32_precision()
    counts = dict.fromkeys(STATUSES, 0)
    bar = None
    if cfg.progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=cfg.n_cases(), desc="bench", unit="case", dynamic_ncols=True)
        except ImportError:
            print("(tqdm not installed: no progress bar)")
    try:
        for dtype_name in cfg.dtypes:
            envmod.set_fp32_precision(envmod.FP32_MODES.get(dtype_name, "ieee"))
            for shape in cfg.shapes():
                inputs = ShapeInputs(shape, DTYPES[dtype_name], runner.device, cfg.seed, cfg.gate_max_steps)
                runner.floor_us(shape, dtype_name)        # the floor first: a broken barrier shows at once
                for mode in cfg.modes:
                    for provider in cfg.providers:
                        if bar is not None:
                            bar.set_postfix_str(f"{provider} {mode} {dtype_name} B={shape.batch} "
                                                f"H={shape.hidden} T={shape.seq_len}", refresh=False)
                        rows = runner.run_case(provider, mode, dtype_name, shape, inputs)
                        sink.write(rows)
                        counts[rows[0]["status"]] = counts.get(rows[0]["status"], 0) + 1
                        if bar is not None:
                            bar.update(1)
                del inputs
                runner._free()
    finally:
        envmod.restore_fp32_precision(saved_precision)
        if bar is not None:
            bar.close()
        sink.close()
        env["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        env["status_counts"] = counts
        json_path.write_text(json.dumps(env, indent=2, default=str))
    print(f"cases by status: {counts}")
    print(f"wrote {csv_path}\n      {json_path}")
    if env["not_gpu_timings"]:
        print("NOTE: CPU run - these are NOT GPU timings; provider 'cudnn' is torch's ATen CPU LSTM, not cuDNN.")
    return csv_path, json_path
