"""The benchmark suite's plumbing, on CPU: a tiny sweep through every CPU provider plus a deliberately
wrong one (the gate must refuse to time it) and a missing one (recorded "unsupported"), the CSV and env
JSON, the plots, the cuDNN regime rule, and the floor kernel in the Triton interpreter. No timing is
asserted: CPU numbers mean nothing.
"""
import csv
import json
import math

import pytest
import torch

from bench import providers
from bench.gate import compare
from bench.regime import SMALL_H, STANDARD, STATIC, algo, regime
from bench.sweep import COLUMNS, STATUSES

CPU_PROVIDERS = ["reference", "cudnn", "eager", "triton", "numba"]


def _setup_wrong(shape, dtype, weights, device):
    """The reference LSTM with its output nudged: plausible-looking, wrong."""
    prep = providers.PROVIDERS["reference"](shape, dtype, weights, device)
    inner = prep.forward

    def forward(x):
        y, (h, c) = inner(x)
        return y + 0.05, (h, c)
    return providers.Prepared(forward, prep.params, "deliberately wrong (test)")


def _setup_missing(shape, dtype, weights, device):
    raise NotImplementedError("backend='missing' is not implemented yet")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A CPU sweep through the emulators (10-25 s on 2 cores): every test using it is marked slow."""
    from bench.__main__ import main
    out = tmp_path_factory.mktemp("bench")
    providers.register("wrong", _setup_wrong)
    providers.register("missing", _setup_missing)
    try:
        rc = main(["--batch", "1,2", "--hidden", "8,16", "--seq-len", "4", "--dtype", "fp32-ieee",
                   "--mode", "fwd,fwd+bwd", "--providers", ",".join(CPU_PROVIDERS + ["wrong", "missing"]),
                   "--out", str(out), "--plots-dir", str(out / "plots"), "--no-progress", "--min-reps", "2"])
    finally:
        del providers.PROVIDERS["wrong"], providers.PROVIDERS["missing"]
    assert rc == 0
    csvs, jsons = list(out.glob("*.csv")), list(out.glob("*.json"))
    assert len(csvs) == 1 and len(jsons) == 1
    with open(csvs[0], newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    return dict(out=out, csv=csvs[0], header=header, rows=rows, env=json.loads(jsons[0].read_text()))


def _rows(sweep, **match):
    return [r for r in sweep["rows"] if all(r[k] == v for k, v in match.items())]


@pytest.mark.slow
def test_csv_is_long_format_with_the_agreed_columns(sweep):
    assert sweep["header"] == COLUMNS
    assert sweep["csv"].name.startswith("cpu-")          # gitignored: reports/data/cpu-*
    for r in sweep["rows"]:
        assert r["status"] in STATUSES
        assert r["device_kind"] == "cpu"
        assert "not GPU timings" in r["gpu"] and "not GPU timings" in r["note"]
    # every case of the sweep is there: 4 shapes x 2 modes x 7 providers
    cases = {(r["provider"], r["mode"], r["batch"], r["hidden"]) for r in _rows(sweep, kernel="lstm", metric="time")}
    assert len(cases) == 4 * 2 * 7


@pytest.mark.slow
def test_correct_providers_are_timed(sweep):
    for prov in ("reference", "cudnn", "eager"):
        for mode in ("fwd", "fwd+bwd"):
            times = _rows(sweep, provider=prov, mode=mode, metric="time")
            assert len(times) == 4 and all(r["status"] == "ok" for r in times), times
            for r in times:
                p20, p50, p80 = float(r["p20"]), float(r["p50"]), float(r["p80"])
                assert 0 < p20 <= p50 <= p80
            for metric in ("time_per_step", "floor_multiple", "gate_error"):
                assert len(_rows(sweep, provider=prov, mode=mode, metric=metric, status="ok")) == 4
            assert all(float(r["p50"]) <= 1 for r in _rows(sweep, provider=prov, mode=mode, metric="gate_error"))
    # the kernel backends either ran (emulated) and passed, or say why not
    for prov in ("triton", "numba"):
        for r in _rows(sweep, provider=prov, metric="time"):
            assert r["status"] in ("ok", "unsupported"), r
            if r["status"] == "unsupported":
                assert r["note"] and r["p50"] == ""


@pytest.mark.slow
def test_wrong_provider_is_gated_out_and_gets_no_time(sweep):
    rows = _rows(sweep, provider="wrong")
    assert rows
    assert all(r["status"] == "incorrect" for r in rows)
    for r in rows:
        if r["metric"] == "gate_error":
            assert float(r["p50"]) > 1
        else:
            assert r["metric"] == "time" and r["p50"] == r["p20"] == r["p80"] == ""
            assert "FAILED" in r["note"] and "y" in r["note"]
    assert not [r for r in rows if r["metric"] in ("time_per_step", "floor_multiple", "memory")]


@pytest.mark.slow
def test_missing_provider_is_unsupported_with_reason(sweep):
    rows = _rows(sweep, provider="missing")
    assert len(rows) == 8
    assert all(r["status"] == "unsupported" and r["p50"] == "" for r in rows)
    assert all("not implemented yet" in r["note"] for r in rows)


@pytest.mark.slow
def test_floor_rows_and_regime_column(sweep):
    floors = _rows(sweep, kernel="floor", metric="time_per_step")
    assert {(r["batch"], r["hidden"]) for r in floors} == {("1", "8"), ("2", "8"), ("1", "16"), ("2", "16")}
    assert all(r["status"] == "ok" and float(r["p50"]) > 0 for r in floors)
    for r in _rows(sweep, kernel="lstm"):
        assert r["cudnn_regime"] == SMALL_H                  # H <= 128: small-H persistent, forward and backward
        assert r["fp32_precision"] == "ieee"


@pytest.mark.slow
def test_env_json(sweep):
    env = sweep["env"]
    for key in ("gpu", "sm_count", "driver", "torch", "torch_cuda", "cudnn", "triton", "numba", "numba_cuda",
                "fp32_precision", "fp32_precision_by_dtype", "git_sha", "git_dirty", "command", "timestamp"):
        assert key in env
    assert env["not_gpu_timings"] is True and "not GPU timings" in env["gpu"]
    assert env["torch"] == torch.__version__
    assert env["fp32_precision_by_dtype"]["fp32-ieee"]["TRITON_F32_DEFAULT"] == "ieee"
    assert env["csv"] == sweep["csv"].name and "finished" in env
    assert sum(env["status_counts"].values()) == 4 * 2 * 7


@pytest.mark.slow
def test_plots_are_written(sweep):
    from bench.plot import plot_files
    pngs = list((sweep["out"] / "plots").glob("*.png"))
    assert pngs and all(p.name.startswith("cpu-") for p in pngs)
    assert not any("speedup" in p.name for p in pngs)                # no ratio of emulated CPU samples
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    again = plot_files([sweep["csv"]], sweep["out"] / "again")      # the standalone entry point too
    assert sorted(p.name for p in again) == sorted(p.name for p in pngs)


def _plot_with_legends(monkeypatch, csv_path, out):
    """plot_files, and every legend entry of the figures it drew."""
    from bench import plot
    labels, close = set(), plot.plt.close

    def spy(fig):
        labels.update(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        close(fig)
    monkeypatch.setattr(plot.plt, "close", spy)
    return plot.plot_files([csv_path], out), labels


@pytest.mark.slow
def test_cpu_plots_call_torch_lstm_what_it_is(sweep, tmp_path, monkeypatch, capsys):
    pngs, labels = _plot_with_legends(monkeypatch, sweep["csv"], tmp_path)
    assert pngs and "torch (ATen CPU)" in labels and not {"cudnn", "cuDNN"} & labels
    assert "speedup heat maps skipped: CPU run" in capsys.readouterr().out
    assert providers.label("cudnn", "cpu") == "torch (ATen CPU)" and providers.label("cudnn", "cuda") == "cuDNN"


def test_gpu_csv_gets_speedup_maps_against_cudnn(tmp_path, monkeypatch):
    rows = []
    for prov, ms in (("cudnn", 2.0), ("triton", 1.0)):
        for batch in (1, 16):
            for metric, value in (("time", ms), ("time_per_step", ms * 1e3 / 1024)):
                rows.append(dict(dict.fromkeys(COLUMNS, ""), kernel="lstm", provider=prov, mode="fwd", dtype="fp16",
                                 batch=batch, hidden=768, seq_len=1024, layers=1, bidirectional="False",
                                 metric=metric, p50=value, p20=value, p80=value, status="ok",
                                 device_kind="cuda", gpu="NVIDIA H100 (synthetic)"))
    path = tmp_path / "gpu-synthetic.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    pngs, labels = _plot_with_legends(monkeypatch, path, tmp_path / "plots")
    assert "speedup-fp16-fwd-T1024.png" in {p.name for p in pngs}
    assert {"cuDNN", "triton"} <= labels


def test_cudnn_regime_rule():
    base = dict(dtype="fp16", batch=16, hidden=768, seq_len=1024, input_size=768)
    assert algo(forward=True, **base) == STATIC                        # the published B=16 H=768 fp16 point
    assert algo(forward=True, **dict(base, dtype="bf16")) == STANDARD  # persistent-static is fp16 only
    assert algo(forward=True, **dict(base, batch=1)) == STANDARD       # batch not a multiple of 8
    assert algo(forward=True, **dict(base, batch=136)) == STANDARD     # batch > 128
    assert algo(forward=True, **dict(base, hidden=1536, input_size=1536)) == STANDARD
    assert algo(forward=True, **dict(base, input_size=100)) == STANDARD
    assert algo(forward=True, layers=2, **base) == STANDARD
    assert algo(forward=True, bidirectional=True, **base) == STANDARD
    assert algo(forward=True, **dict(base, dtype="fp32-tf32", hidden=192, input_size=192)) == SMALL_H
    assert regime("fwd+bwd", **dict(base, dtype="fp32-ieee", hidden=160, input_size=160)) == f"{SMALL_H}/{STANDARD}"
    assert regime("fwd+bwd", **dict(base, hidden=128, input_size=128)) == SMALL_H


def test_gate_measure():
    ref = {"y": torch.ones(3, 2), "grad_w": torch.full((4,), 1000.0)}
    ok = compare({"y": ref["y"] + 1e-6, "grad_w": ref["grad_w"] + 0.1}, ref, "fp32-ieee")
    assert ok.ok and ok.ratio < 1                   # 0.1 on a tensor of 1000s is within rtol x max|ref|
    bad = compare({"y": ref["y"] + 1e-2, "grad_w": ref["grad_w"]}, ref, "fp32-ieee")
    assert not bad.ok and bad.worst == "y"
    assert not compare({"y": ref["y"]}, ref, "bf16").ok                      # a missing gradient fails
    assert math.isinf(compare({"y": ref["y"] * math.nan, "grad_w": ref["grad_w"]}, ref, "bf16").ratio)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_floor_kernel_exchanges_h(dtype):
    from bench.floor import check_floor
    h, ref, timed_out = check_floor(3, 20, dtype, "cpu", programs=1, steps=3)
    assert not timed_out
    assert compare({"h": h}, {"h": ref}, "fp32-ieee" if dtype == torch.float32 else "fp16").ok


def test_profile_report_on_cpu(tmp_path):
    from bench.profile import main
    out = tmp_path / "cpu-profile.md"
    assert main(["--shapes", "2x8x3", "--providers", "reference,cudnn,missing", "--out", str(out)]) == 0
    text = out.read_text()
    assert "NOT GPU timings" in text
    assert "| reference | 2 | 8 | 3 | fwd |" in text and "| cudnn | 2 | 8 | 3 | bwd |" in text
    assert "| missing | 2 | 8 | 3 | - |" in text          # an unknown provider is reported, not fatal
    assert "not measured: no GPU" in text


@pytest.mark.slow
def test_floor_kernel_compiles_for_sm90_without_spills():
    """The floor kernel as H100 launches would run it (the Triton LSTM's grid, our tiles), compiled for sm_90
    in a subprocess (the interpreter must be off there): no spills, one program per SM at most."""
    import os
    import subprocess
    import sys
    pytest.importorskip("lstm_gpu.kernels.triton_sm90")
    specs = ["1,128,fp32", "256,2048,fp32", "64,1024,bf16", "16,768,fp16", "16,768,fp16,polled", "1,64,fp16,polled"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "bench.floor", *specs], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    usages = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [u["spec"] for u in usages] == specs
    for usage in usages:
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, usage
        assert usage["REG"] <= 255 and 1 <= usage["programs"] <= 132, usage
        assert usage["barrier"] == ("none (polled)" if usage["spec"].endswith("polled")
                                    else "lstm_gpu.kernels.triton_barrier.grid_barrier")


@pytest.mark.parametrize("provider,polled", [("triton-polled", True), ("triton-counter", False)])
def test_exchange_switch_covers_the_backward(provider, polled, monkeypatch):
    """"triton-counter" / "triton-polled" time forward + backward with both exchanges switched: the backward's
    config is chosen when autograd runs it, so the switch wraps the backward too (``Prepared.around``), in the
    gate's call and in the timed one."""
    from lstm_gpu.kernels import triton_config, triton_lstm
    shape = providers.Shape(3, 20, 5)
    weights = providers.shared_weights(shape)
    cpu = torch.device("cpu")
    seen = []
    real = triton_lstm.lstm_bwd
    monkeypatch.setattr(triton_lstm, "lstm_bwd", lambda *a, config=None, **k: seen.append(
        triton_config.choose_config(B=a[0].shape[1], H=a[0].shape[2], dtype=a[0].dtype, device=cpu, backward=True))
        or real(*a, config=config, **k))
    prep = providers.PROVIDERS[provider](shape, torch.float16, weights, cpu)
    x = torch.randn(5, 3, 20, generator=torch.Generator().manual_seed(0)).half()
    dy = torch.randn(5, 3, 20, generator=torch.Generator().manual_seed(1)).half()
    got = providers.outputs(prep, x, dy, "fwd+bwd")
    fn, _ = providers.timed_call(prep, x, dy, "fwd+bwd")
    fn()
    assert len(seen) == 2 and all(c.polled_backward(torch.float16) == polled for c in seen), seen
    assert triton_config.polled_h() is None
    want = providers.oracle(shape, torch.float16, weights, x, dy)
    assert (got["grad_x"].double() - want["grad_x"].double()).abs().max().item() < 2e-2


@pytest.mark.parametrize("provider", ["triton-polled", "triton-counter", "triton-per-gate", "triton-rows",
                                      "triton-unfolded"])
def test_switched_providers_run_their_variant_and_match_the_oracle(provider, monkeypatch):
    """The headline's variants of the triton forward: "triton-polled" / "triton-counter" (the h exchange forced
    polled / through the step counter, and the backward's dz exchange with it; one batch tile, as here, the
    configs poll it), "triton-per-gate" (the
    tensor-core product per gate, not fused), "triton-rows" (the fused product in rows, not transposed) and
    "triton-unfolded" (K not folded into M: the weights in shared memory), interpreter on CPU, fp16: the variant
    runs, within fp16 tolerance of the oracle; the switch is back to its default after the call; not for fp32."""
    from lstm_gpu.kernels import triton_config, triton_lstm
    variant = {"triton-polled": lambda c: c.polled_exchange(torch.float16),
               "triton-counter": lambda c: not c.polled_exchange(torch.float16),
               "triton-per-gate": lambda c: c.use_dot and c.pieces == 0,
               "triton-rows": lambda c: c.pieces > 0 and not c.transposed,
               "triton-unfolded": lambda c: c.pieces > 0 and c.fold == 1}[provider]
    shape = providers.Shape(3, 20, 5)
    weights = providers.shared_weights(shape)
    cpu = torch.device("cpu")
    seen = []
    real = triton_lstm.lstm_fwd
    monkeypatch.setattr(triton_lstm, "lstm_fwd", lambda *a, config=None, **k: seen.append(
        triton_config.choose_config(B=a[0].shape[1], H=a[0].shape[2] // 4, dtype=a[0].dtype, device=cpu))
        or real(*a, config=config, **k))
    prep = providers.PROVIDERS[provider](shape, torch.float16, weights, cpu)
    x = torch.randn(5, 3, 20, generator=torch.Generator().manual_seed(0)).half()
    dy = torch.randn(5, 3, 20, generator=torch.Generator().manual_seed(1)).half()
    got = providers.outputs(prep, x, dy, "fwd")
    assert seen and all(variant(c) for c in seen)
    assert (triton_config.polled_h() is None and triton_config.fused_gates() and triton_config.transposed_gates()
            and triton_config.folded_gates())
    default = triton_config.choose_config(B=3, H=20, dtype=torch.float16, device=cpu)
    assert default.polled_exchange(torch.float16) and default.transposed and default.pieces > 0 and default.fold == 2
    want = providers.oracle(shape, torch.float16, weights, x, dy)
    for k in ("y", "h_n", "c_n"):
        assert (got[k].double() - want[k].double()).abs().max().item() < 1e-2, k
    with pytest.raises(providers.Unsupported, match="16"):
        providers.PROVIDERS[provider](shape, torch.float32, weights, cpu)


def test_polled_floor_exchanges_h():
    """The polled floor (bench/floor.py, the LSTM's exchange without a barrier) computes what the counter floor
    does, one program (interpreter); a poll that returned before every element was written would read -0.0
    marks: the many-program path is the GPU's (bench.floor_scan checks each launch against the reference)."""
    from bench.floor import check_polled
    h, ref = check_polled(3, 20, "cpu", programs=1, steps=3)
    assert not (h.view(torch.int16) == -32768).any()
    assert compare({"h": h}, {"h": ref}, "fp16").ok


def test_l2_read_probe_reads_both_copies():
    """bench/l2_read.py (the GPU session's L2 bandwidth probe): three passes read copy 0, 1, 0 of a group's values,
    each folded to BLOCK lanes, against the sum written out here (a pass hoisted out of the loop, one reading the
    same copy every time, or a program reading another group's rows would not match); three programs in two groups,
    run one after the other (interpreter)."""
    from bench import l2_read
    h = torch.randn(2, 2, 2 * l2_read.BLOCK, generator=torch.Generator().manual_seed(0)).half()   # copies, groups
    out = torch.zeros(3, l2_read.BLOCK)
    l2_read.launch(h, out, programs=3, iters=3)
    a, b = h.float().split(l2_read.BLOCK, dim=2)                  # each copy's two blocks of lanes, per group
    want = 2 * (a[0] + b[0]) + (a[1] + b[1])                      # [group, BLOCK]
    assert torch.allclose(out, want[[0, 1, 0]], atol=1e-3)        # program i reads group i % 2
    assert torch.allclose(l2_read.expected(h, 3, 3, l2_read.BLOCK), want[[0, 1, 0]], atol=1e-3)


def test_stack_counters_provider_switches_both_passes(monkeypatch):
    """"triton-stack-counters" (the GPU session's stack step) runs the one-launch stack with its exchanges through the
    epoch counters, forward and backward, matches the oracle, and leaves the switches as they were."""
    from lstm_gpu.kernels import triton_stack
    shape = providers.Shape(2, 8, 4, layers=2, bidirectional=True)
    weights = providers.shared_weights(shape)
    seen = []
    for name in ("stack_fwd", "stack_bwd"):
        real = getattr(triton_stack, name)
        monkeypatch.setattr(triton_stack, name, lambda *a, _real=real, _n=name, **k: seen.append(
            (_n, triton_stack.POLLED_FORWARD, triton_stack.POLLED_BACKWARD)) or _real(*a, **k))
    prep = providers.PROVIDERS["triton-stack-counters"](shape, torch.float32, weights, torch.device("cpu"))
    x = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(0))
    dy = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(1))
    got = providers.outputs(prep, x, dy, "fwd+bwd")
    assert {n for n, _, _ in seen} == {"stack_fwd", "stack_bwd"} and all(not f and not b for _, f, b in seen), seen
    assert triton_stack.POLLED_FORWARD and triton_stack.POLLED_BACKWARD
    want = providers.oracle(shape, torch.float32, weights, x, dy)
    for k in ("y", "h_n", "grad_x"):
        assert (got[k].double() - want[k].double()).abs().max().item() < 1e-4, k


def test_stall_reasons_parse_ncu_raw_csv():
    """bench/stalls.py reads ncu's raw CSV page: the units row skipped, the stall reasons by their short names."""
    from bench import stalls
    text = "\n".join([
        "==PROF== Connected to process 1",
        '"ID","Kernel Name","gpu__time_duration.sum","smsp__average_warps_issue_stalled_long_scoreboard'
        '_per_issue_active.ratio","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",'
        '"smsp__inst_executed.sum"',
        '"","","nsecond","ratio","ratio","inst"',
        '"0","_lstm_fwd_kernel","821,000","3.5","1.25","1,234,567"'])
    got = stalls.parse(text)
    assert got == {"gpu__time_duration.sum": 821000.0, "long_scoreboard": 3.5, "barrier": 1.25,
                   "smsp__inst_executed.sum": 1234567.0, "kernel": "_lstm_fwd_kernel"}
    md = stalls.table({"triton": got, "cudnn": "ncu gave no rows"})
    assert md.index("long_scoreboard") < md.index("barrier") and "| 3.50 |" in md
    assert stalls.main(["--dry"]) == 0


def test_gpu_csv_and_per_step_columns(tmp_path, monkeypatch):
    """bench.env.write_gpu_csv (floor_scan, insitu): reports/data/gpu-<gpu>-<what>.csv, the first row's columns;
    Timing.per_step: ms a call -> µs a step."""
    from bench import env
    from bench.timing import Timing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "data").mkdir(parents=True)
    monkeypatch.setattr(env, "gpu_name", lambda: "NVIDIA H200")
    rows = [dict(a=1, **Timing(2.0, 1.0, 3.0, 5).per_step(1000))]
    path = env.write_gpu_csv("insitu", rows)
    assert path == "reports/data/gpu-nvidia-h200-insitu.csv"
    assert (tmp_path / path).read_text().splitlines() == [
        "a,us_per_step_p50,us_per_step_p20,us_per_step_p80", "1,2.0,1.0,3.0"]
