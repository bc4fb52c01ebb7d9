"""Reliability on a GPU (marker ``gpu``): no hang, no silent wrong answer, for both kernel backends.

Run with ``pytest -m gpu``. Every test compares with the reference or with itself bitwise, never times.
"""
import pytest
import torch

import lstm_gpu
from lstm_gpu import reference

pytestmark = pytest.mark.gpu
KERNELS = ["triton", "numba"]


def _skip_unless(backend, H=256, dtype=torch.float32):
    try:
        lstm_gpu.select_backend(backend, device="cuda", dtype=dtype, hidden_size=H)
    except (ValueError, NotImplementedError) as e:
        pytest.skip(str(e))


def _layer(T, B, H, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    s = H ** -0.5
    return (torch.randn(T, B, 4 * H, device="cuda", dtype=dtype, generator=g),
            s * torch.randn(B, H, device="cuda", dtype=dtype, generator=g),
            s * torch.randn(B, H, device="cuda", dtype=dtype, generator=g),
            s * torch.randn(4 * H, H, device="cuda", dtype=dtype, generator=g))


def _run(backend, gates_x, h0, c0, w_hh, save=False, lengths=None, reverse=False):
    return lstm_gpu.ops.layer_fwd(gates_x, h0, c0, w_hh, None, lengths, reverse, backend, save)


@pytest.mark.parametrize("backend", KERNELS)
def test_two_streams_concurrently(backend):
    """Two launches in flight on two streams must each have their own barrier state."""
    _skip_unless(backend, 512)
    a, b = _layer(300, 8, 512, seed=1), _layer(300, 8, 512, seed=2)
    expect = [_run(backend, *a)[0], _run(backend, *b)[0]]
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    outs = []
    for _ in range(20):
        with torch.cuda.stream(s1):
            o1 = _run(backend, *a)[0]
        with torch.cuda.stream(s2):
            o2 = _run(backend, *b)[0]
        outs.append((o1, o2))
    torch.cuda.synchronize()
    for o1, o2 in outs:
        assert torch.equal(o1, expect[0]) and torch.equal(o2, expect[1])


@pytest.mark.parametrize("backend", KERNELS)
def test_1000_back_to_back_launches_are_bitwise_equal(backend):
    _skip_unless(backend)
    args = _layer(32, 8, 256)
    first = _run(backend, *args)[0]
    last = None
    for _ in range(1000):
        last = _run(backend, *args)[0]
    torch.cuda.synchronize()
    assert torch.equal(first, last)


@pytest.mark.parametrize("backend", KERNELS)
def test_100k_time_steps(backend):
    _skip_unless(backend)
    gates_x, h0, c0, w_hh = _layer(100_000, 2, 256)
    y, h_n, c_n, _, _ = _run(backend, gates_x, h0, c0, w_hh)
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()
    # the last 64 steps from the state 64 steps before the end, by the reference
    T0 = 100_000 - 64
    y_ref, h_ref, c_ref, _, _ = reference.forward(gates_x[T0:].double(), y[T0 - 1].double(),
                                                  _cell_at(backend, gates_x, h0, c0, w_hh, T0), w_hh.double())
    assert (h_n.double() - h_ref).abs().max() < 1e-3


def _cell_at(backend, gates_x, h0, c0, w_hh, t):
    """c after step t-1, from a kernel run over the first t steps (save=True gives the cells)."""
    out = _run(backend, gates_x[:t].contiguous(), h0, c0, w_hh, save=False)
    return out[2].double()


@pytest.mark.parametrize("backend", KERNELS)
def test_offsets_past_2_pow_31(backend):
    """T·B·4H > 2³¹ elements in gates_x: the kernels must index in 64 bits (about 8.6 GB of fp16)."""
    _skip_unless(backend, 1024, torch.float16)
    T, B, H = 1050, 512, 1024                       # T·B·4H = 2.2e9
    free, _ = torch.cuda.mem_get_info()
    if free < 16e9:
        pytest.skip("needs 16 GB free")
    torch.manual_seed(0)
    gates_x = torch.randn(T, B, 4 * H, device="cuda", dtype=torch.float16)
    h0 = torch.zeros(B, H, device="cuda", dtype=torch.float16)
    w_hh = (torch.randn(4 * H, H, device="cuda") * H ** -0.5).half()
    y = _run(backend, gates_x, h0, h0, w_hh)[0]
    tail = slice(T - 2, T)                          # the steps at the far end of the buffer
    y_ref = reference.forward(gates_x[T - 3:].float(), y[T - 4].float(),
                              _cell_at(backend, gates_x, h0, h0, w_hh, T - 3).float(), w_hh.float())[0]
    assert (y[tail].float() - y_ref[1:]).abs().max() < 2e-2


@pytest.mark.parametrize("backend", KERNELS)
def test_no_gpu_memory_growth_over_10000_calls(backend):
    _skip_unless(backend, 128)
    torch.manual_seed(0)
    rnn = lstm_gpu.LSTM(16, 128, backend=backend).cuda()
    x = torch.randn(8, 4, 16, device="cuda", requires_grad=True)

    def step():
        y, (h, c) = rnn(x)
        (y.sum() + c.sum()).backward()
    for _ in range(100):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(10_000):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= 1 << 20, "allocated memory grew"
