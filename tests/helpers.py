"""Shared test helpers: build a torch.nn.LSTM and an lstm_gpu.LSTM with the same weights, compare."""
import contextlib

import pytest
import torch

import lstm_gpu


def twin_lstms(*args, backend="reference", dtype=torch.float64, seed=0, **kwargs):
    """(torch.nn.LSTM, lstm_gpu.LSTM) with identical parameters."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(*args, **kwargs).to(dtype)
    ours = lstm_gpu.LSTM(*args, backend=backend, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def assert_close(actual, expected, atol, rtol=0.0, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    tol = atol + rtol * (expected.double().abs().max().item() if expected.numel() else 0.0)
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.3e}"


def grads_of(module, tensors):
    """Gradients of the module's parameters (by name) and of the given tensors."""
    g = {name: p.grad for name, p in module.named_parameters()}
    g.update({f"input{i}": t.grad for i, t in enumerate(tensors)})
    return g


def packed_bidirectional_vs_torch(backend, *, T, B, I, H, lengths, dtype, tol, context=contextlib.nullcontext,
                                  proj_size=0, device="cpu"):
    """lstm_gpu.LSTM(backend=...) vs torch.nn.LSTM: 2 layers, bidirectional, unsorted packed input, given
    h0/c0; y, h_n, c_n and the gradients of x, h0, c0 and every parameter within ``tol``. ``context()``
    wraps only our module's forward and backward (e.g. ``lstm_gpu.testing.concurrent_programs(n)``). The layers
    run one launch per layer and direction (stack=False): tests/test_stack.py tests the one-launch stack."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=dtype, proj_size=proj_size, device=device)
    ours = lstm_gpu.LSTM(I, H, num_layers=2, bidirectional=True, dtype=dtype, proj_size=proj_size, device=device,
                         backend=backend, stack=False)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    h0 = torch.randn(4, B, proj_size or H, dtype=dtype, device=device)
    c0 = torch.randn(4, B, H, dtype=dtype, device=device)
    results = []
    for model in (ref, ours):
        xi, h0i, c0i = (t.clone().requires_grad_() for t in (x, h0, c0))
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False)
        with context() if model is ours else contextlib.nullcontext():
            out, (hn, cn) = model(packed, (h0i, c0i))
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
            (y.square().sum() + hn.sum() + 0.5 * cn.square().sum()).backward()
        results.append([y, hn, cn, xi.grad, h0i.grad, c0i.grad] + [p.grad for p in model.parameters()])
    names = ["y", "h_n", "c_n", "dx", "dh0", "dc0"] + [name for name, _ in ref.named_parameters()]
    for name, want, got in zip(names, *results):
        assert_close(got, want, tol, what=f"{backend} {name}")


def skip_unless_runs_on_cuda(backend, dtype=torch.float32, H=64):
    """Skip the test (with the reason) when ``backend`` cannot run an H-unit call of ``dtype`` on CUDA."""
    try:
        lstm_gpu.select_backend(backend, device="cuda", dtype=dtype, hidden_size=H)
    except (ValueError, NotImplementedError) as e:
        pytest.skip(str(e))
