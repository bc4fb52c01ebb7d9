"""Shared test helpers: build a torch.nn.LSTM and an lstm_gpu.LSTM with the same weights, compare."""
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
