"""Every malformed call raises a clear error naming the argument (never a crash or a wrong answer)."""
from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_gpu
from lstm_gpu import LSTMArgumentError

f64 = dict(dtype=torch.float64)


def module(**kw):
    return lstm_gpu.LSTM(3, 4, **kw).double()


BAD_MODULE_CALLS = [  # (id, module kwargs, input, hx, expected words in the message)
    ("4-D input", {}, torch.randn(2, 3, 4, 3, **f64), None, "2-D"),
    ("1-D input", {}, torch.randn(3, **f64), None, "2-D"),
    ("wrong feature size", {}, torch.randn(5, 2, 7, **f64), None, "input_size"),
    ("zero steps", {}, torch.randn(0, 2, 3, **f64), None, "time steps"),
    ("input dtype", {}, torch.randn(5, 2, 3), None, "dtype"),
    ("integer input", {}, torch.ones(5, 2, 3, dtype=torch.int64), None, "floating"),
    ("h0 wrong batch", {}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(1, 3, 4, **f64), torch.zeros(1, 2, 4, **f64)), "h_0"),
    ("c0 wrong size", {}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(1, 2, 4, **f64), torch.zeros(1, 2, 5, **f64)), "c_0"),
    ("h0 wrong layers", {"num_layers": 2}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(1, 2, 4, **f64), torch.zeros(1, 2, 4, **f64)), "h_0"),
    ("h0 2-D for batched", {}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(2, 4, **f64), torch.zeros(2, 4, **f64)), "3-D"),
    ("h0 3-D for unbatched", {}, torch.randn(5, 3, **f64),
     (torch.zeros(1, 1, 4, **f64), torch.zeros(1, 1, 4, **f64)), "2-D"),
    ("h0 dtype", {}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, **f64)), "dtype"),
    ("hx not a tuple", {}, torch.randn(5, 2, 3, **f64), torch.zeros(1, 2, 4, **f64), "tuple"),
    ("h0 proj size", {"proj_size": 2}, torch.randn(5, 2, 3, **f64),
     (torch.zeros(1, 2, 4, **f64), torch.zeros(1, 2, 4, **f64)), "h_0"),
    ("input not a tensor", {}, [[1.0, 2.0, 3.0]], None, "tensor"),
]


@pytest.mark.parametrize("case", BAD_MODULE_CALLS, ids=[c[0] for c in BAD_MODULE_CALLS])
def test_bad_module_call_raises_a_named_error(case):
    _, kwargs, x, hx, words = case
    with pytest.raises(LSTMArgumentError, match=words):
        module(**kwargs)(x, hx)


def test_errors_are_both_value_and_runtime_errors():
    """nn.LSTM raises ValueError for some bad input and RuntimeError for other: both are caught."""
    for exc in (ValueError, RuntimeError):
        with pytest.raises(exc):
            module()(torch.randn(5, 2, 7, **f64))


def test_device_mismatch_is_named():
    with pytest.raises(LSTMArgumentError, match="meta"):
        module()(torch.randn(5, 2, 3, **f64, device="meta"))


def test_bad_backend_name():
    with pytest.raises(LSTMArgumentError, match="backend"):
        lstm_gpu.LSTM(3, 4, backend="cudnnn")
    with pytest.raises(LSTMArgumentError, match="backend"):
        lstm_gpu.lstm(torch.randn(2, 1, 3), torch.randn(16, 3), torch.randn(16, 4), backend="fast")


def test_unsorted_lengths_with_enforce_sorted():
    with pytest.raises(RuntimeError, match="sorted"):
        pack_padded_sequence(torch.randn(5, 3, 3, **f64), torch.tensor([3, 5, 2]), enforce_sorted=True)


def _layer(T=4, B=2, I=3, H=4):
    return torch.randn(T, B, I), torch.randn(4 * H, I), torch.randn(4 * H, H)


@pytest.mark.parametrize("lengths,words", [
    (torch.tensor([4, 0]), ">= 1"),
    (torch.tensor([-1, 2]), ">= 1"),
    (torch.tensor([5, 2]), "<= the sequence length"),
    (torch.tensor([4, 2, 1]), "shape"),
    (torch.tensor([4.0, 2.0]), "integer"),
])
def test_bad_lengths(lengths, words):
    x, w_ih, w_hh = _layer()
    with pytest.raises(LSTMArgumentError, match=words):
        lstm_gpu.lstm(x, w_ih, w_hh, lengths=lengths, backend="reference")


@pytest.mark.parametrize("kwargs,words", [
    (dict(weight_ih=torch.randn(16, 5)), "weight_ih"),
    (dict(weight_hh=torch.randn(15, 4)), "weight_hh"),
    (dict(weight_hh=torch.randn(16, 3)), "weight_hh"),
    (dict(bias_ih=torch.randn(16)), "bias_hh"),
    (dict(bias_ih=torch.randn(15), bias_hh=torch.randn(16)), "bias_ih"),
    (dict(h0=torch.randn(3, 4)), "h0"),
    (dict(c0=torch.randn(2, 4, dtype=torch.float64)), "c0"),
    (dict(weight_hr=torch.randn(2, 5)), "weight_hr"),
    (dict(weight_hh=torch.randn(4, 16)), "weight_hh"),                     # transposed: named, not weight_ih
    (dict(weight_hh=torch.randn(16, 2), weight_hr=torch.randn(4, 2)), "weight_hr"),      # weight_hr transposed
    (dict(reverse="False"), "reverse must be a bool"),                    # truthy: it ran backwards on cudnn
    (dict(reverse=None), "reverse must be a bool"),
    (dict(lengths=torch.tensor([4, 2], device="meta")), "meta"),
])
def test_bad_functional_arguments(kwargs, words):
    x, w_ih, w_hh = _layer()
    args = dict(weight_ih=w_ih, weight_hh=w_hh)
    args.update(kwargs)
    with pytest.raises(LSTMArgumentError, match=words):
        lstm_gpu.lstm(x, **args)


def test_kernel_backend_without_emulation_on_cpu_says_why(monkeypatch):
    # imported with emulation on first: imported under the patched variables, they stayed compiled-for-GPU for
    # every later test of the session (the whole suite imports them at collection; a file run alone did not)
    pytest.importorskip("lstm_gpu.kernels.triton_lstm")
    pytest.importorskip("lstm_gpu.kernels.numba_lstm")
    for backend, var in (("triton", "TRITON_INTERPRET"), ("numba", "NUMBA_ENABLE_CUDASIM")):
        monkeypatch.setenv(var, "0")
        with pytest.raises((ValueError, NotImplementedError), match=backend):
            lstm_gpu.select_backend(backend, device="cpu", dtype=torch.float32, hidden_size=8)


def test_explicit_triton_names_the_hidden_size_limit_of_the_targeted_device(monkeypatch):
    """On a GPU the limit depends on its SM count (a stand-in device here); the CPU interpreter has none."""
    gpu = SimpleNamespace(name="NVIDIA H100 80GB HBM3 (stand-in)", multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: gpu)
    on_gpu = dict(device="cuda", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(cuda: NVIDIA H100 80GB HBM3 \(stand-in\), 132 SMs\) backend='triton' "
                                         r"runs hidden_size <= 1024 for torch.float32$"):
        lstm_gpu.select_backend("triton", hidden_size=2000, **on_gpu)
    assert lstm_gpu.select_backend("triton", hidden_size=1024, **on_gpu) == "triton"
    assert lstm_gpu.backends.hidden_size_limit("triton", device="cuda", dtype=torch.float64) == 528
    assert lstm_gpu.backends.hidden_size_limit("triton", device="cuda", dtype=torch.bfloat16) == 1536
    gpu.multi_processor_count = 46
    with pytest.raises(ValueError, match=r"46 SMs\) backend='triton' runs hidden_size <= 512 for torch.float32$"):
        lstm_gpu.select_backend("triton", hidden_size=1024, **on_gpu)
    # CPU (TRITON_INTERPRET=1): one program holds all of W_hh, so no hidden-size limit
    assert lstm_gpu.select_backend("triton", device="cpu", dtype=torch.float32, hidden_size=2000) == "triton"
    assert lstm_gpu.backends.hidden_size_limit("triton", device="cpu", dtype=torch.float32) is None


@pytest.mark.parametrize("stack", [0, 1, "yes", None])
def test_stack_must_be_a_bool_or_auto(stack):
    """0 and 1 passed a `stack in ("auto", True, False)` check, but the module tests `is True`: stack=1 ran per
    layer without the error stack=True gives, stack=0 ran the one launch."""
    with pytest.raises(ValueError, match="stack"):
        lstm_gpu.LSTM(3, 4, backend="triton", stack=stack)
    m = lstm_gpu.LSTM(3, 4, num_layers=2, backend="triton")
    m.stack = stack                                     # set after construction: refused when it is read
    with pytest.raises(LSTMArgumentError, match="stack"):
        m(torch.randn(2, 1, 3))


@pytest.mark.parametrize("x,words", [
    (None, "tensor"), ([[1.0]], "tensor"), (torch.randn(3, **f64), "2-D"), (torch.randn(5, 2, 7, **f64), "input_size"),
    (torch.randn(0, 2, 3, **f64), "time steps"), (torch.randn(5, 2, 3), "dtype"),
])
def test_backend_for_checks_its_input_as_forward_does(x, words):
    """backend_for answered for inputs that forward refuses, or raised from inside (AttributeError, IndexError)."""
    with pytest.raises(LSTMArgumentError, match=words):
        module().backend_for(x)
