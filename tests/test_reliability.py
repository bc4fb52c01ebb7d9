"""Reliability on CPU: numerics at the edges, determinism, strided inputs, property-based comparison with
nn.LSTM, no memory growth. The kernel backends join through ``CPU_BACKENDS`` in their CPU configurations."""
import gc
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import lstm_gpu
from helpers import assert_close, twin_lstms

BACKENDS = ["reference", "triton", "numba"]


@pytest.fixture(autouse=True)
def _skip_unavailable(request):
    backend = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if backend:
        try:
            lstm_gpu.select_backend(backend, device="cpu", dtype=torch.float32, hidden_size=6)
        except (ValueError, NotImplementedError) as e:
            pytest.skip(str(e))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [50.0, 1e4])
def test_saturated_gates_match_nn_lstm(backend, scale):
    ref, ours = twin_lstms(3, 6, backend=backend, dtype=torch.float32)
    x = scale * torch.randn(5, 2, 3)
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x), ours(x)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert torch.isfinite(a).all()
        assert_close(a, b, 1e-4, rtol=1e-5, what=f"saturated x{scale}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_propagate_like_nn_lstm(backend, bad):
    ref, ours = twin_lstms(3, 4, backend=backend, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    x[2, 1, 0] = bad                                   # one element of one sequence at t = 2
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x), ours(x)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN pattern differs from nn.LSTM"
        assert torch.allclose(a, b, atol=1e-12, equal_nan=True)
    assert torch.isfinite(y2[:, 0]).all() and torch.isfinite(y2[:2]).all(), "NaN leaked into another sequence"


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_bitwise_deterministic(backend):
    _, ours = twin_lstms(3, 5, backend=backend, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = torch.randn(4, 2, 3, requires_grad=True)
    runs = []
    for _ in range(2):
        ours.zero_grad()
        x.grad = None
        y, (h, c) = ours(x)
        (y.sum() + h.sum()).backward()
        runs.append([y, h, c, x.grad] + [p.grad for p in ours.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_expanded_inputs(backend):
    ref, ours = twin_lstms(3, 4, backend=backend, batch_first=True)
    base = torch.randn(3, 7, 6, dtype=torch.float64)
    x = base[:, ::2, ::2]                                      # strided
    h0 = torch.randn(1, 1, 4, dtype=torch.float64).expand(1, 3, 4)   # stride 0 along batch
    c0 = torch.randn(1, 4, 3, dtype=torch.float64).transpose(1, 2)   # transposed
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x, (h0, c0)), ours(x, (h0, c0))
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert_close(a, b, 1e-12, what="strided input")


def test_gradient_with_stride_zero_upstream():
    """``y.sum().backward()`` hands backward an expanded (stride 0) gradient."""
    ref, ours = twin_lstms(3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for m in (ref, ours):
        m(x)[0].sum().backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, 1e-12, what=n)


EXAMPLES = int(os.environ.get("LSTM_GPU_HYPOTHESIS_EXAMPLES", 25))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 6), B=st.integers(1, 4), I=st.integers(1, 5), H=st.integers(1, 6),
       layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(),
       proj=st.integers(0, 5), packed=st.booleans(), with_hx=st.booleans(), seed=st.integers(0, 2**16))
def test_property_matches_nn_lstm(backend, T, B, I, H, layers, bidirectional, batch_first, proj, packed,
                                  with_hx, seed):
    proj = proj if proj < H else 0         # nn.LSTM wants proj_size < hidden_size
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, proj_size=proj)
    ref, ours = twin_lstms(I, H, seed=seed, backend=backend, **kw)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    D = 2 if bidirectional else 1
    hx = (torch.randn(layers * D, B, proj or H, generator=g, dtype=torch.float64),
          torch.randn(layers * D, B, H, generator=g, dtype=torch.float64)) if with_hx else None
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out1, (h1, c1) = ref(x, hx)
    out2, (h2, c2) = ours(x, hx)
    if packed:
        out1, out2 = out1.data, out2.data
    for a, b in ((out2, out1), (h2, h1), (c2, c1)):
        assert_close(a, b, 1e-10, what="property")


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.slow     # 10 000 calls: ~8 s on 2 cores
def test_no_memory_growth_over_10000_calls():
    _, ours = twin_lstms(2, 3, dtype=torch.float32)
    x = torch.randn(2, 1, 2, requires_grad=True)

    def step():
        y, (h, c) = ours(x)
        (y.sum() + c.sum()).backward()
    for _ in range(500):
        step()
    gc.collect()
    before = _rss_mb()
    for _ in range(10_000):
        step()
    gc.collect()
    assert _rss_mb() - before < 20, f"resident memory grew by {_rss_mb() - before:.1f} MB"
