"""``auto`` on a GPU picks a kernel only where a committed GPU measurement shows it faster than cuDNN for
that GPU, dtype and shape bucket (lstm_gpu/dispatch.py, table built by bench/dispatch_table.py): tested
with a synthetic benchmark CSV, no GPU needed (the device name is faked)."""
import csv
import json

import pytest
import torch

import lstm_gpu
from bench import dispatch_table
from bench.sweep import COLUMNS
from lstm_gpu import backends, dispatch

H100 = "NVIDIA H100 80GB HBM3"


def _row(provider, mode, dtype, B, H, T, p50, status="ok", gpu=H100, layers=1, bidirectional=False):
    return dict(kernel="lstm", provider=provider, mode=mode, dtype=dtype, batch=B, hidden=H, seq_len=T, layers=layers,
                bidirectional=bidirectional, input_size=H, metric="time", unit="ms", p50=p50 if status == "ok" else "",
                p20=p50, p80=p50, status=status, device_kind="cuda", gpu=gpu)


POINTS = [   # (provider, mode, dtype, B, H, T, p50 ms[, status[, gpu]])
    # B16 H768 fp16: triton faster in both modes, numba faster too but less so -> triton
    ("cudnn", "fwd", "fp16", 16, 768, 1024, 2.0), ("triton", "fwd", "fp16", 16, 768, 1024, 1.0),
    ("numba", "fwd", "fp16", 16, 768, 1024, 1.5),
    ("cudnn", "fwd+bwd", "fp16", 16, 768, 1024, 5.0), ("triton", "fwd+bwd", "fp16", 16, 768, 1024, 4.0),
    ("numba", "fwd+bwd", "fp16", 16, 768, 1024, 4.5),
    # B1 H256 fp16: triton faster forward, slower forward+backward -> cudnn
    ("cudnn", "fwd", "fp16", 1, 256, 1024, 2.0), ("triton", "fwd", "fp16", 1, 256, 1024, 1.0),
    ("cudnn", "fwd+bwd", "fp16", 1, 256, 1024, 3.0), ("triton", "fwd+bwd", "fp16", 1, 256, 1024, 3.5),
    # B64 H1024 bf16: only forward measured -> cudnn (both modes are required)
    ("cudnn", "fwd", "bf16", 64, 1024, 1024, 2.0), ("triton", "fwd", "bf16", 64, 1024, 1024, 1.0),
    # B16 H768 fp32-tf32: triton faster but gated out once -> numba (faster everywhere)
    ("cudnn", "fwd", "fp32-tf32", 16, 768, 1024, 2.0), ("triton", "fwd", "fp32-tf32", 16, 768, 1024, 0, "incorrect"),
    ("numba", "fwd", "fp32-tf32", 16, 768, 1024, 1.9),
    ("cudnn", "fwd+bwd", "fp32-tf32", 16, 768, 1024, 5.0), ("triton", "fwd+bwd", "fp32-tf32", 16, 768, 1024, 1.0),
    ("numba", "fwd+bwd", "fp32-tf32", 16, 768, 1024, 4.9),
    # B1 H256 fp16 in a 2-layer bidirectional stack: triton faster (a bucket of its own, beside the one layer's)
    ("cudnn", "fwd", "fp16", 1, 256, 1024, 9.0, "ok", H100, 2, True),
    ("triton", "fwd", "fp16", 1, 256, 1024, 1.0, "ok", H100, 2, True),
    ("cudnn", "fwd+bwd", "fp16", 1, 256, 1024, 20.0, "ok", H100, 2, True),
    ("triton", "fwd+bwd", "fp16", 1, 256, 1024, 3.0, "ok", H100, 2, True),
    # another GPU: its own rows
    ("cudnn", "fwd", "fp16", 16, 768, 1024, 1.0, "ok", "NVIDIA H200"),
    ("triton", "fwd", "fp16", 16, 768, 1024, 2.0, "ok", "NVIDIA H200"),
]


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "gpu-nvidia-h100-test.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for p in POINTS:
            w.writerow({k: v for k, v in _row(*p).items() if k in COLUMNS})
    out = tmp_path / "table.json"
    assert dispatch_table.main([str(path), "-o", str(out)]) == 0
    dispatch.set_table(dispatch.Table.load(out))
    monkeypatch.setattr(dispatch, "gpu_name", lambda device: H100)
    monkeypatch.setattr(backends, "unsupported_reason", lambda *a, **k: None)   # the kernels "fit"
    yield json.loads(out.read_text())
    dispatch.set_table(None)


def _auto(dtype=torch.float16, B=16, H=768, T=1024, **kw):
    return lstm_gpu.select_backend("auto", device="cuda", dtype=dtype, hidden_size=H, batch=B, seq_len=T,
                                   explain=True, **kw)


def test_generated_rows(table):
    rows = {(r["gpu"], r["dtype"], r["batch"], r["hidden"]): r for r in table["rows"] if r["layers"] == 1}
    assert [(r["layers"], r["bidirectional"], r["backend"]) for r in table["rows"] if r["layers"] > 1] == [
        (2, True, "triton")]
    assert rows[(H100, "fp16", 16, 1024)]["backend"] == "triton"
    assert rows[(H100, "fp16", 16, 1024)]["worst_ratio"] == pytest.approx(0.8)
    assert rows[(H100, "fp16", 1, 256)]["backend"] == "cudnn"
    assert rows[(H100, "bf16", 64, 1024)]["backend"] == "cudnn"
    assert rows[(H100, "fp32-tf32", 16, 1024)]["backend"] == "numba"
    assert rows[("NVIDIA H200", "fp16", 16, 1024)]["backend"] == "cudnn"


def test_auto_picks_the_measured_kernel_inside_its_bucket(table):
    for B, H, T in [(16, 768, 1024), (9, 513, 513), (16, 1024, 1024)]:      # same bucket: 16, 1024, 1024
        c = _auto(B=B, H=H, T=T)
        assert c.backend == "triton" and c.row["batch"] == 16 and c.row["hidden"] == 1024
        assert "dispatch table row" in c.reason and H100 in c.reason
    assert lstm_gpu.select_backend("auto", device="cuda", dtype=torch.float16, hidden_size=768, batch=16,
                                   seq_len=1024) == "triton"


def test_auto_is_cudnn_where_nothing_was_measured_or_cudnn_won(table):
    for kw in [dict(B=17), dict(H=1025), dict(T=1025), dict(dtype=torch.float64)]:
        c = _auto(**kw)
        assert c.backend == "cudnn" and c.row is None and "no measurement" in c.reason
    c = _auto(B=1, H=256)
    assert c.backend == "cudnn" and c.row["backend"] == "cudnn" and "cuDNN measured at least as fast" in c.reason
    assert _auto(dtype=torch.bfloat16, B=64, H=1024).backend == "cudnn"      # forward only: not enough
    assert _auto(proj_size=8).backend == "cudnn"


def test_auto_reads_the_gpu_name(table, monkeypatch):
    monkeypatch.setattr(dispatch, "gpu_name", lambda device: "NVIDIA A100-SXM4-80GB")
    c = _auto()
    assert c.backend == "cudnn" and "no measurement" in c.reason and "A100" in c.reason


def test_fp32_follows_cudnn_tf32_flag_and_triton_precision(table, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert _auto(dtype=torch.float32).backend == "numba"                  # fp32-tf32 row
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert "no measurement" in _auto(dtype=torch.float32).reason          # fp32-ieee: not measured


def test_a_kernel_that_cannot_run_the_call_falls_back_to_cudnn(table, monkeypatch):
    monkeypatch.setattr(backends, "unsupported_reason", lambda *a, **k: "too big for this GPU")
    c = _auto()
    assert c.backend == "cudnn" and "too big for this GPU" in c.reason and c.row["backend"] == "triton"


def test_a_stack_is_decided_by_measurements_of_that_stack(table):
    """The first GPU run measured a 2-layer stack 10x faster than cuDNN's and one layer of the same shape slower:
    neither decides for the other."""
    assert _auto(B=1, H=256).backend == "cudnn"
    c = _auto(B=1, H=256, num_layers=2, bidirectional=True)
    assert c.backend == "triton" and c.row["layers"] == 2 and c.row["bidirectional"] and "2 layer(s) bidir" in c.reason
    for kw in [dict(num_layers=2), dict(num_layers=3, bidirectional=True), dict(num_layers=1, bidirectional=True)]:
        c = _auto(B=1, H=256, **kw)
        assert c.backend == "cudnn" and c.row is None and "no measurement" in c.reason
    from lstm_gpu import module
    seen = {}
    real = module.select_backend
    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)
    with pytest.MonkeyPatch.context() as mp:       # the module passes its stack on
        mp.setattr(module, "select_backend", spy)
        lstm_gpu.LSTM(4, 8, num_layers=2, bidirectional=True).backend_for(torch.randn(3, 1, 4))
    assert seen["num_layers"] == 2 and seen["bidirectional"] is True


def test_unknown_seq_len_needs_every_measured_seq_len_to_agree(table):
    assert _auto(T=None).backend == "triton"


def test_shipped_table_matches_the_committed_gpu_measurements():
    """lstm_gpu/dispatch_table.json is what bench/dispatch_table.py makes of reports/data/gpu-*.csv."""
    paths = sorted(dispatch_table.REPO.glob(dispatch_table.DEFAULT_GLOB))
    shipped = json.loads(dispatch.TABLE_PATH.read_text())
    assert shipped["rows"] == json.loads(json.dumps(dispatch_table.build(paths)["rows"])), (
        "run `python -m bench.dispatch_table` after adding GPU measurements")


def test_without_measurements_auto_is_torch_lstm_on_cuda_and_on_cpu():
    dispatch.set_table(dispatch.Table([]))
    try:
        c = lstm_gpu.select_backend("auto", device="cuda", dtype=torch.float16, hidden_size=768, explain=True)
        assert c.backend == "cudnn" and c.row is None and "no GPU measurement" in c.reason
        assert lstm_gpu.select_backend("auto", device="cpu", dtype=torch.float32, hidden_size=8) == "cudnn"
        m = lstm_gpu.LSTM(4, 8)
        c = m.backend_for(torch.randn(3, 2, 4), explain=True)
        assert c.backend == "cudnn" and "cpu" in c.reason and c.row is None
        assert lstm_gpu.select_backend("triton", device="cpu", dtype=torch.float32, hidden_size=8,
                                       explain=True).reason == "named explicitly"
    finally:
        dispatch.set_table(None)


def test_a_device_whose_name_cannot_be_read_gets_cudnn(table, monkeypatch):
    """auto on "cuda" where torch has no CUDA (a CPU build): no measurement can apply, cuDNN, not an error from
    torch.cuda.get_device_name (the first H200 rows in the shipped table made every such call raise)."""
    def no_cuda(device):
        raise AssertionError("Torch not compiled with CUDA enabled")
    monkeypatch.setattr(dispatch, "gpu_name", no_cuda)
    c = _auto()
    assert c.backend == "cudnn" and c.row is None and "cannot be read" in c.reason
