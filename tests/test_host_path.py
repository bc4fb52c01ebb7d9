"""The host path of a call: checked once per module call, lengths moved once and without a device sync,
nothing read back from the device.

The "meta" device stands in for a GPU here: its tensors have no data, so any host read of a device
tensor (``int(t.min())``, ``.item()``, ``.cpu()``, a pageable copy back) raises instead of silently
synchronising. tests/test_reliability_gpu.py repeats the no-sync check on a GPU with torch's sync debug
mode.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_gpu
from lstm_gpu import backends, checks, functional, module


def _packed(T=5, B=3, I=4, device="meta"):
    p = pack_padded_sequence(torch.randn(T, B, I), torch.tensor([T, 3, 2][:B]))
    return torch.nn.utils.rnn.PackedSequence(p.data.to(device), p.batch_sizes, None, None)


def test_a_module_call_reads_nothing_back_from_the_device():
    m = lstm_gpu.LSTM(4, 8, num_layers=2, bidirectional=True, backend="reference").to("meta")
    y, (h, c) = m(_packed())                                 # lengths: host (PackedSequence), moved once
    assert y.data.device.type == "meta" and h.shape == (4, 3, 8)
    y, _ = m(torch.randn(5, 3, 4, device="meta"))
    assert y.shape == (5, 3, 16)


def test_lstm_with_host_lengths_reads_nothing_back_from_the_device():
    x = torch.randn(5, 3, 4, device="meta")
    w_ih, w_hh = torch.randn(32, 4, device="meta"), torch.randn(32, 8, device="meta")
    y, _ = lstm_gpu.lstm(x, w_ih, w_hh, lengths=torch.tensor([5, 3, 2]), reverse=True,
                          backend="reference")    # the op path, as the kernels take it
    assert y.shape == (5, 3, 8)


def test_lengths_checked_on_the_host():
    host = checks.check_lengths(torch.tensor([3, 1], dtype=torch.int32), T=3, B=2)
    assert host.device.type == "cpu" and host.dtype == torch.int64 and host.tolist() == [3, 1]
    with pytest.raises(lstm_gpu.LSTMArgumentError, match="<= the sequence length 3"):
        checks.check_lengths(torch.tensor([4, 1]), T=3, B=2)
    with pytest.raises(lstm_gpu.LSTMArgumentError, match=">= 1"):
        checks.check_lengths(torch.tensor([0, 1]), T=3, B=2)


def test_host_lengths_go_to_a_gpu_through_pinned_memory_without_blocking():
    calls = []

    class HostLengths:                                       # records what is done with it
        device = torch.device("cpu")

        def to(self, *args, **kwargs):
            calls.append(("to", args, kwargs))
            return self

        def pin_memory(self):
            calls.append(("pin_memory",))
            return self

    gpu = torch.device("cuda", 1)
    checks.lengths_to_device(HostLengths(), gpu)
    assert calls == [("to", (torch.int64,), {}), ("pin_memory",), ("to", (gpu,), {"non_blocking": True})]


def test_a_module_call_checks_and_converts_once(monkeypatch):
    """2 layers x 2 directions: the input is checked, the backend chosen and the lengths moved ONCE;
    the layers run on the unchecked path (lstm() itself is not called)."""
    counts = dict(check_layer_args=0, select_backend=0, lengths_to_device=0, lstm=0)

    def counting(obj, name, key=None):
        real = getattr(obj, name)

        def wrapper(*args, **kwargs):
            counts[key or name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(obj, name, wrapper)

    counting(checks, "check_layer_args")
    counting(checks, "lengths_to_device")
    counting(module, "select_backend")
    counting(functional, "lstm")
    m = lstm_gpu.LSTM(4, 8, num_layers=2, bidirectional=True, backend="reference")
    m(_packed(device="cpu"))
    assert counts == dict(check_layer_args=0, select_backend=1, lengths_to_device=1, lstm=0)


def test_public_lstm_still_checks_everything():
    x = torch.randn(5, 3, 4)
    with pytest.raises(lstm_gpu.LSTMArgumentError, match="weight_ih"):
        lstm_gpu.lstm(x, torch.randn(32, 5), torch.randn(32, 8))
    with pytest.raises(lstm_gpu.LSTMArgumentError, match="lengths"):
        lstm_gpu.lstm(x, torch.randn(32, 4), torch.randn(32, 8), lengths=torch.tensor([6, 1, 1]))


def test_module_refuses_parameters_of_mixed_dtypes():
    """The layers trust the parameters, so the module checks all of them once, not only the first."""
    m = lstm_gpu.LSTM(4, 8, num_layers=2)
    m.weight_hh_l1.data = m.weight_hh_l1.data.double()
    with pytest.raises(lstm_gpu.LSTMArgumentError, match="weight_hh_l1"):
        m(torch.randn(5, 3, 4))


def test_select_backend_is_what_the_module_uses():
    assert module.select_backend is backends.select_backend


def test_host_overhead_script_runs():
    """bench/host_overhead.py, stubbed launches, a handful of calls (plumbing only: no timing asserted)."""
    from bench import host_overhead
    lines = []
    rows = host_overhead.run(["reference", "cudnn"], device="cpu", stub=False, calls=2, repeats=1,
                             out=lines.append)
    assert {(r["backend"], r["variant"]) for r in rows} == {(b, v) for b in ("reference", "cudnn")
                                                           for v in host_overhead.VARIANTS}
    assert all(r["p50_us"] > 0 for r in rows)


def test_host_overhead_one_call_at_a_time_separates_host_and_device_time():
    """drained_calls: the host time of a call with the device idle before it, and its latency through the
    synchronize after it. A fake device whose synchronize takes 20 ms: the latency holds it, the host time not."""
    import time as clock
    from bench import host_overhead
    r = host_overhead.drained_calls(lambda variant: None, "no_grad", 3, sync=lambda: clock.sleep(0.02))
    assert r["drained_us"] < 5_000 <= 20_000 <= r["latency_us"], r


def test_host_overhead_stubs_every_triton_launch(monkeypatch):
    """With launches stubbed, a triton module call (2 layers, bidirectional: the one-launch stack) runs no
    kernel in the interpreter: left unstubbed, the stack's kernel ran there and its 240 ms a call were reported
    as host time."""
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    from bench import host_overhead
    from lstm_gpu.kernels import numba_lstm, triton_lstm, triton_stack
    for mod, names in ((triton_lstm, ("_lstm_fwd_kernel", "_lstm_bwd_kernel")),
                       (triton_stack, ("_stack_fwd_kernel", "_stack_bwd_kernel"))):
        for name in names:
            monkeypatch.setattr(mod, name, getattr(mod, name))      # restored after the test
    monkeypatch.setattr(numba_lstm, "_KERNELS", dict(numba_lstm._KERNELS))

    def ran(*args, **kwargs):
        raise AssertionError("a Triton kernel ran in the interpreter")
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", ran)
    host_overhead.stub_launches()
    m, call = host_overhead.make_case("triton", torch.device("cpu"))
    assert "one launch for all" in m.backend_for(torch.randn(1, 2, 16), explain=True).reason
    for variant in host_overhead.VARIANTS:
        y, _ = call(variant)
        if variant == "train":
            (y.data if hasattr(y, "batch_sizes") else y).sum().backward()    # the backward's launch too


@pytest.mark.parametrize("backend", ["triton", "numba"])
@pytest.mark.parametrize("layers,bidirectional,proj_size", [(1, False, 0), (2, True, 0), (2, False, 3)])
def test_kernel_backends_run_on_the_meta_device_as_nn_lstm_does(backend, layers, bidirectional, proj_size):
    """Shape inference and deferred initialisation run models on the meta device; nn.LSTM runs there, and so do
    the kernel backends (the ops' fake functions: nothing is computed), forward and backward, with nn.LSTM's
    shapes. They refused meta as "not a CUDA device"."""
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, proj_size=proj_size)
    ours = lstm_gpu.LSTM(4, 8, backend=backend, **kwargs).to("meta")
    ref = torch.nn.LSTM(4, 8, **kwargs).to("meta")
    x = torch.randn(5, 3, 4, device="meta", requires_grad=True)
    got, want = ours(x), ref(x)
    assert [t.shape for t in (got[0], *got[1])] == [t.shape for t in (want[0], *want[1])]
    got[0].sum().backward()
    assert x.grad.shape == x.shape and ours.weight_hh_l0.grad.shape == ours.weight_hh_l0.shape
    if backend == "triton":             # a GPU runs bfloat16 (the interpreter does not: meta is not the CPU)
        y, _ = ours.to(torch.bfloat16)(x.detach().to(torch.bfloat16))
        assert y.dtype == torch.bfloat16 and y.shape == want[0].shape
