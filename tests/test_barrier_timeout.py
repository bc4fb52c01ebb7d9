"""The Triton grid barrier's debug mode (LSTM_GPU_BARRIER_TIMEOUT): a barrier that can never complete
times out and raises instead of hanging.

On CPU the interpreter runs programs one after another, so a grid of two programs that must meet at a
barrier is exactly the deadlock the debug mode exists for: program 0 waits for a program that only
starts once it has finished. Without the time-out these tests would hang; with it they must raise.
"""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")
from lstm_gpu.kernels import triton_lstm  # noqa: E402
from lstm_gpu.kernels.triton_barrier import barrier_timeout  # noqa: E402
from lstm_gpu.kernels.triton_config import choose_config  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the deadlock is staged in the CPU interpreter")


def _two_program_config(B, H, dtype):
    cfg = choose_config(B=B, H=H, dtype=dtype, device=torch.device("cpu"))
    return dataclasses.replace(cfg, ht=cfg.ht // 2, num_programs=2)


def _layer(T=3, B=2, H=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(T, B, 4 * H, generator=g, dtype=dtype), torch.zeros(B, H, dtype=dtype),
            torch.zeros(B, H, dtype=dtype), torch.randn(4 * H, H, generator=g, dtype=dtype))


def test_forward_barrier_times_out_and_raises(monkeypatch):
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "200")
    gates_x, h0, c0, w = _layer()
    with pytest.raises(RuntimeError, match="grid barrier timed out"):
        triton_lstm.lstm_fwd(gates_x, h0, c0, w, config=_two_program_config(2, 8, torch.float32))


def test_backward_barrier_times_out_and_raises(monkeypatch):
    gates_x, h0, c0, w = _layer()
    y, h_n, c_n, gates, cells = triton_lstm.lstm_fwd(gates_x, h0, c0, w)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "200")
    with pytest.raises(RuntimeError, match="grid barrier timed out"):
        triton_lstm.lstm_bwd(torch.ones_like(y), torch.zeros_like(h_n), torch.zeros_like(c_n), gates, cells, c0, w,
                             config=_two_program_config(2, 8, torch.float32))


def test_timeout_setting_is_validated(monkeypatch):
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="LSTM_GPU_BARRIER_TIMEOUT"):
        barrier_timeout()
    monkeypatch.delenv("LSTM_GPU_BARRIER_TIMEOUT")
    assert barrier_timeout() == 0
