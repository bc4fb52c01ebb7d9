"""lstm_gpu.convert: swaps every nn.LSTM for lstm_gpu.LSTM, sharing the parameters."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import lstm_gpu
from helpers import assert_close


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.encoder = nn.Sequential(nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True))
        self.decoder = nn.LSTM(12, 5, proj_size=3)
        self.head = nn.Linear(3, 7)

    def forward(self, tokens):
        y, _ = self.encoder[0](self.embed(tokens))
        y, _ = self.decoder(y.transpose(0, 1))
        return self.head(y)


def test_convert_replaces_every_lstm_and_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = Tagger().double()
    tokens = torch.randint(0, 10, (3, 5))
    expected = model(tokens)
    expected.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    params_before = {n: p for n, p in model.named_parameters()}
    model.zero_grad()

    assert lstm_gpu.convert(model, backend="reference") is model
    assert isinstance(model.encoder[0], lstm_gpu.LSTM) and isinstance(model.decoder, lstm_gpu.LSTM)
    assert not any(type(m) is nn.LSTM for m in model.modules())
    assert model.encoder[0].batch_first and model.decoder.proj_size == 3
    for n, p in model.named_parameters():
        assert p is params_before[n], f"{n} is not the same Parameter object"

    out = model(tokens)
    assert_close(out, expected, 1e-12, what="output")
    out.sum().backward()
    for n, p in model.named_parameters():
        assert_close(p.grad, ref_grads[n], 1e-12, what=n)


def test_convert_an_lstm_itself_and_keep_training_mode():
    lstm = nn.LSTM(3, 4, dropout=0.2, num_layers=2).eval()
    new = lstm_gpu.convert(lstm)
    assert isinstance(new, lstm_gpu.LSTM) and not new.training and new.dropout == 0.2
    assert new.weight_hh_l1 is lstm.weight_hh_l1


def test_print_shows_the_swap_and_the_backend():
    model = nn.Sequential(nn.LSTM(10, 20), nn.Linear(20, 2))
    assert "(0): LSTM(10, 20)" in str(model)
    lstm_gpu.convert(model)
    assert "(0): lstm_gpu.LSTM(10, 20, backend='auto')" in str(model)
    assert repr(lstm_gpu.convert(nn.LSTM(3, 4, num_layers=2), backend="reference")) == \
        "lstm_gpu.LSTM(3, 4, num_layers=2, backend='reference')"


def _weight_norm(m):
    nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")


def _old_weight_norm(m):
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(m, "weight_hh_l0")          # a forward pre-hook recomputes the weight


def _pruned(m):
    prune.l1_unstructured(m, "weight_ih_l0", 0.5)   # a buffer (mask), a parameter and a pre-hook


@pytest.mark.parametrize("reparametrize", [_weight_norm, _old_weight_norm, _pruned], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("backend", ["reference", "triton", "numba"])
def test_convert_keeps_a_reparametrized_weight(reparametrize, backend):
    """An nn.LSTM with a reparametrized weight (weight_norm as parametrization or as hook, pruning), as AWD-LSTM
    style models have: convert keeps the reparametrization (the computed weight was copied, and convert failed),
    and the outputs and the gradients of the underlying parameters are nn.LSTM's."""
    def make():                     # not deepcopy: torch cannot copy a module with the old weight_norm
        torch.manual_seed(0)
        m = nn.LSTM(3, 4, num_layers=2).double()
        reparametrize(m)
        return m
    ref, ours = make(), lstm_gpu.convert(make(), backend=backend)
    assert isinstance(ours, lstm_gpu.LSTM) and ours.backend == backend
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for m in (ref, ours):
        y, (h, c) = m(x)
        (y.pow(2).sum() + c.sum()).backward()
    assert_close(ours(x)[0], ref(x)[0], 1e-10, what="y")
    ours_params = dict(ours.named_parameters())
    assert dict(ref.named_parameters()).keys() == ours_params.keys()
    for name, p in ref.named_parameters():
        assert_close(ours_params[name].grad, p.grad, 1e-9, what=f"grad of {name}")
    back = lstm_gpu.to_torch(ours)
    assert_close(back(x)[0], ref(x)[0], 1e-12, what="to_torch")


def test_convert_keeps_hooks_and_their_handles():
    """Hooks registered on the nn.LSTM fire on the converted module, and their handles still remove them."""
    m = nn.LSTM(3, 4)
    calls = []
    pre = m.register_forward_pre_hook(lambda mod, args: calls.append("pre"))
    m.register_forward_hook(lambda mod, args, out: calls.append(type(mod).__name__))
    ours = lstm_gpu.convert(m, backend="reference")
    ours(torch.randn(2, 1, 3))
    assert calls == ["pre", "LSTM"] and isinstance(ours, lstm_gpu.LSTM)
    m.register_forward_hook(lambda mod, args, out: calls.append(mod is ours))     # the converted module runs
    pre.remove()
    ours(torch.randn(2, 1, 3))
    assert calls == ["pre", "LSTM", "LSTM", True]


def test_to_torch_leaves_the_module_alone():
    """A hook registered on to_torch's twin, or pruning it, does not reach the lstm_gpu module (its pre-hook looked
    for the twin's mask on the module: AttributeError)."""
    ours = lstm_gpu.LSTM(3, 4, backend="reference")
    twin = lstm_gpu.to_torch(ours)
    calls = []
    twin.register_forward_hook(lambda *a: calls.append("twin"))
    prune.l1_unstructured(twin, "weight_ih_l0", 0.5)
    ours(torch.randn(2, 1, 3))
    twin(torch.randn(2, 1, 3))
    assert calls == ["twin"]


def test_convert_after_compile_runs_the_kernels_and_deepcopies():
    """nn.LSTM.compile() sets a compiled forward on the instance: carried over, the converted module ran the
    compiled nn.LSTM, never its own forward. And a converted weight-normed module deep-copies (its weight list
    held a tensor with a graph)."""
    m = nn.LSTM(3, 4)
    m.compile()
    ours = lstm_gpu.convert(m, backend="reference")
    seen = []
    ours.register_forward_pre_hook(lambda mod, args: seen.append(type(mod)))
    ours(torch.randn(2, 1, 3))
    assert seen == [lstm_gpu.LSTM] and "_compiled_call_impl" not in vars(ours)
    normed = lstm_gpu.convert(nn.utils.parametrizations.weight_norm(nn.LSTM(3, 4), "weight_hh_l0"),
                              backend="reference")
    x = torch.randn(2, 1, 3)
    assert_close(copy.deepcopy(normed)(x)[0], normed(x)[0], 0.0, what="deep copy")
