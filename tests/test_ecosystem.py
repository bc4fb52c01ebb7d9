"""Autocast, streaming inference, serialisation and TorchScript (CPU parts; the CUDA parts are in test_ecosystem_gpu.py)."""
import io

import pytest
import torch

import lstm_gpu
from helpers import assert_close, twin_lstms


def test_cpu_autocast_runs_in_bfloat16_like_nn_lstm():
    ref, ours = twin_lstms(3, 8, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = torch.randn(6, 2, 3)
    exact, _ = ref(x)
    results = []
    for m in (ref, ours):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h, c) = m(x)
        assert (y.dtype, h.dtype, c.dtype) == (torch.bfloat16,) * 3
        y.float().square().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())
        results.append(((y.float() - exact).abs().max().item(), [p.grad for p in m.parameters()]))
    (ref_err, ref_grads), (our_err, our_grads) = results
    assert our_err <= 2 * ref_err + 1e-3, f"bf16 error {our_err:.2e} vs nn.LSTM's {ref_err:.2e}"
    for a, b in zip(our_grads, ref_grads):
        assert_close(a, b, 3e-2, rtol=3e-2, what="autocast grad")


def test_streaming_chunks_equal_one_call():
    """Carrying (h, c) across calls chunk by chunk gives the outputs of one call on the whole sequence."""
    _, rnn = twin_lstms(3, 5, num_layers=2, batch_first=True)
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    whole, (h_whole, c_whole) = rnn(x)
    state, outputs = None, []
    for chunk in x.split(4, dim=1):
        y, state = rnn(chunk, state)
        outputs.append(y)
    assert_close(torch.cat(outputs, 1), whole, 1e-12, what="streamed output")
    assert_close(state[0], h_whole, 1e-12, what="h_n")
    assert_close(state[1], c_whole, 1e-12, what="c_n")


class Model(torch.nn.Module):
    def __init__(self, lstm_cls, **kw):
        super().__init__()
        self.rnn = lstm_cls(4, 6, num_layers=2, **kw)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_torch_save_and_load_a_whole_model():
    model = Model(lstm_gpu.LSTM, backend="reference").double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded.rnn, lstm_gpu.LSTM) and loaded.rnn.backend == "reference"
    assert torch.equal(loaded(x), model(x))


def test_nn_lstm_checkpoint_loads_into_lstm_gpu_model():
    torch.manual_seed(0)
    theirs = Model(torch.nn.LSTM).double()
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    ours = Model(lstm_gpu.LSTM).double()
    ours.load_state_dict(torch.load(buf))
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    assert_close(ours(x), theirs(x), 1e-12, what="output after loading an nn.LSTM checkpoint")


class _Tagger(torch.nn.Module):
    """A model with an lstm_gpu.LSTM inside, as a user would script it (TorchScript reads its source)."""

    def __init__(self, backend="auto"):
        super().__init__()
        self.lstm = lstm_gpu.LSTM(3, 5, num_layers=2, batch_first=True, proj_size=2, backend=backend).double()
        self.out = torch.nn.Linear(2, 4).double()

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.out(y) + c.sum()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torch_jit_script_scripts_the_nn_lstm_sharing_the_parameters():
    """TorchScript cannot compile the backend dispatch: torch.jit.script of a model holding an lstm_gpu.LSTM
    scripts the torch.nn.LSTM sharing its parameters (torch's LSTM, what backend="cudnn" runs): the same outputs
    as nn.LSTM, gradients into the same parameters; an explicit kernel backend warns that it is not what runs."""
    model = _Tagger()
    scripted = torch.jit.script(model)
    ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True, proj_size=2).double()
    ref.load_state_dict(model.lstm.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    y_ref, (_, c_ref) = ref(x)
    assert_close(scripted(x), model.out(y_ref) + c_ref.sum(), 1e-12, what="scripted model")
    scripted(x).sum().backward()
    assert model.lstm.weight_hh_l0.grad is not None and model.lstm.weight_hr_l1.grad is not None
    assert lstm_gpu.to_torch(model.lstm).weight_ih_l1 is model.lstm.weight_ih_l1
    with pytest.warns(UserWarning, match="scripted module runs torch's LSTM, not the kernels"):
        torch.jit.script(_Tagger(backend="reference"))


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("backend", ["reference", "triton", "numba"])
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torch_jit_trace_checks_and_trains(backend, proj_size):
    """torch.jit.trace of the module on each kernel backend: its own check passes (it re-traces without
    gradients; the forward's "save for backward" flag, a Python bool, is a constant in the graph and differed:
    it is always on while tracing), the traced module gives nn.LSTM's output, and trains (the gradients of
    nn.LSTM's parameters)."""
    ref, ours = twin_lstms(3, 5, num_layers=2, bidirectional=True, proj_size=proj_size, backend=backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    traced = torch.jit.trace(ours, (x,))                 # check_trace=True: raises on differing graphs
    y, (h, c) = traced(x)
    y_ref, (h_ref, c_ref) = ref(x)
    assert_close(y, y_ref, 1e-10, what="traced y")
    (y.sum() + c.sum()).backward()
    (y_ref.sum() + c_ref.sum()).backward()
    for name, p in ref.named_parameters():
        assert_close(getattr(ours, name).grad, p.grad, 1e-9, what=f"traced grad of {name}")


@pytest.mark.parametrize("backend", ["reference", "triton", "numba"])
@pytest.mark.parametrize("layers,bidirectional,proj_size", [(2, True, 0), (1, False, 3)], ids=["2-bi", "proj"])
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_torch_func_grad_and_per_sample_gradients(backend, layers, bidirectional, proj_size):
    """torch.func.grad over functional_call, and vmap of it (per-sample gradients, as DP-SGD takes them), equal
    nn.LSTM's. The ops' generated autograd.Function has no setup_context, which functorch requires: grad raised
    (pytorch/pytorch#168393); under a transform the op now runs inside Functions that have one."""
    from torch.func import functional_call, grad, vmap
    ref, ours = twin_lstms(3, 4, num_layers=layers, bidirectional=bidirectional, proj_size=proj_size,
                           backend=backend)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def loss(module):
        return lambda p, x: functional_call(module, p, (x,))[0].pow(2).sum()
    got, want = grad(loss(ours))(params, x), grad(loss(ref))(params, x)
    for k in params:
        assert_close(got[k], want[k], 1e-10, what=f"torch.func.grad of {k}")
    per_sample = vmap(grad(lambda p, x: loss(ours)(p, x.unsqueeze(1))), in_dims=(None, 1))(params, x)
    for i in range(x.shape[1]):
        want = grad(loss(ref))(params, x[:, i:i + 1])
        for k in params:
            assert_close(per_sample[k][i], want[k], 1e-10, what=f"per-sample gradient {i} of {k}")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_func_second_derivatives_raise_instead_of_being_wrong(backend):
    """Second derivatives inside torch.func transforms are refused with a message saying what works (the
    reference's differentiable backward re-run inside a transform gave jacrev(jacrev(f)) off by 0.4), and
    forward mode (hessian = jacfwd(jacrev)) says it is not supported."""
    from torch.func import functional_call, hessian, jacrev
    ours = lstm_gpu.LSTM(2, 2, backend=backend).double()
    x = torch.randn(3, 2, 2, dtype=torch.float64)

    def f(b):
        return functional_call(ours, {"bias_hh_l0": b}, (x,))[0].pow(2).sum()
    b = ours.bias_hh_l0.detach()
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        jacrev(jacrev(f))(b)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        hessian(f)(b)


@pytest.mark.parametrize("backend", ["reference", "triton", "numba"])
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_functionalize_and_plain_vmap_keep_working(backend):
    """Only the differentiating transforms take the Function path: under functionalize (no rule for a Python
    Function: "NYI: Functionalize rule for custom_function_call") and a plain vmap the ops serve as before, the
    one-launch stack included; under grad the stack steps aside for the layer op."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functional_call, functionalize, grad, vmap
    ref, ours = twin_lstms(3, 4, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    graph = make_fx(functionalize(lambda x: ours(x)[0]))(x)
    assert_close(graph(x), ref(x)[0], 1e-10, what="functionalized")
    y = vmap(lambda xi: ours(xi.unsqueeze(1))[0][:, 0], in_dims=1, out_dims=1)(x)
    assert_close(y, ref(x)[0], 1e-10, what="vmap over the batch")
    if backend == "triton":
        reasons = []
        params = {k: v.detach() for k, v in ours.named_parameters()}

        def f(p):
            reasons.append(ours.backend_for(x, explain=True).reason)
            return functional_call(ours, p, (x,))[0].sum()
        grad(f)(params)
        assert "per-layer launches (inside a torch.func transform" in reasons[0], reasons


@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_per_sample_gradients_are_one_launch_per_layer_and_direction(backend, monkeypatch):
    """vmap folds the samples into the batch (the ops' batching rules): N samples are one launch per layer and
    direction, forward and backward, not N (torch's fallback loops), with each sample's own dW_hh."""
    from torch.func import functional_call, grad, vmap
    kernels = lstm_gpu.backends.kernel_module(backend)
    calls = []
    for name in ("forward", "backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    ref, ours = twin_lstms(3, 4, num_layers=2, bidirectional=True, backend=backend)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = torch.randn(4, 5, 3, dtype=torch.float64)

    def loss(module):
        return lambda p, xi: functional_call(module, p, (xi.unsqueeze(1),))[0].pow(2).sum()
    per_sample = vmap(grad(loss(ours)), in_dims=(None, 1))(params, x)
    assert calls.count("forward") == 4 and calls.count("backward") == 4, calls
    for i in range(5):
        want = grad(loss(ref))(params, x[:, i])
        for k in params:
            assert_close(per_sample[k][i], want[k], 1e-10, what=f"sample {i}: {k}")


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_over_an_ensemble_of_weights():
    """Batched weights (vmap over stacked parameters: an ensemble) take the per-sample path: each member's output
    and gradients are its own nn.LSTM's."""
    from torch.func import functional_call, grad, stack_module_state, vmap
    models = [twin_lstms(3, 4, backend="triton", seed=s) for s in range(3)]
    params, _ = stack_module_state([ours for _, ours in models])
    params = {k: v.detach() for k, v in params.items()}
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    base = models[0][1]
    grads = vmap(grad(lambda p: functional_call(base, p, (x,))[0].pow(2).sum()))(params)
    for i, (ref, _) in enumerate(models):
        ref(x)[0].pow(2).sum().backward()
        for k, p in ref.named_parameters():
            assert_close(grads[k][i], p.grad, 1e-10, what=f"member {i}: {k}")
