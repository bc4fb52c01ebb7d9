"""lstm_gpu.LSTM (reference backend) against torch.nn.LSTM in float64: every output, every gradient."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstm_gpu
from helpers import assert_close, grads_of, twin_lstms

TOL = 1e-10

OPTIONS = [  # (input_size, hidden_size, kwargs)
    (3, 5, {}),
    (1, 1, {}),
    (4, 7, {"num_layers": 2}),
    (6, 5, {"bidirectional": True}),
    (5, 6, {"num_layers": 3, "bidirectional": True, "batch_first": True}),
    (4, 6, {"proj_size": 3}),
    (4, 6, {"proj_size": 2, "num_layers": 2, "bidirectional": True}),
    (3, 4, {"bias": False}),
    (3, 4, {"batch_first": True, "num_layers": 2, "dropout": 0.3}),   # eval(): no dropout
]
SHAPES = [(1, 1), (6, 3), (4, 1)]   # (T, B)


def run_both(ref, ours, x, hx=None, grad_out_seed=1):
    """Forward and backward through both modules with the same upstream gradient."""
    outs = []
    for m in (ref, ours):
        m.zero_grad()
        xi = x.detach().clone().requires_grad_()
        hxi = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
        y, (h, c) = m(xi, hxi)
        g = torch.Generator().manual_seed(grad_out_seed)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (y, h, c))
        loss.backward()
        outs.append(((y, h, c), grads_of(m, [xi] + ([] if hxi is None else list(hxi)))))
    return outs


@pytest.mark.parametrize("I,H,kwargs", OPTIONS)
@pytest.mark.parametrize("T,B", SHAPES)
@pytest.mark.parametrize("with_hx", [False, True])
def test_outputs_and_gradients_match_nn_lstm(I, H, kwargs, T, B, with_hx):
    ref, ours = twin_lstms(I, H, **kwargs)
    ref.eval(), ours.eval()
    x = torch.randn((B, T, I) if kwargs.get("batch_first") else (T, B, I), dtype=torch.float64)
    hx = None
    if with_hx:
        L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
        P = kwargs.get("proj_size") or H
        hx = (torch.randn(L, B, P, dtype=torch.float64), torch.randn(L, B, H, dtype=torch.float64))
    (ref_out, ref_g), (our_out, our_g) = run_both(ref, ours, x, hx)
    for name, a, b in zip(("output", "h_n", "c_n"), our_out, ref_out):
        assert_close(a, b, TOL, what=name)
    assert ref_g.keys() == our_g.keys()
    for name in ref_g:
        assert_close(our_g[name], ref_g[name], TOL, what=f"grad {name}")


@pytest.mark.parametrize("kwargs,packed", [({}, False), ({"num_layers": 2, "bidirectional": True}, True),
                                           ({"proj_size": 2, "batch_first": True}, False)])
def test_double_backward_matches_nn_lstm(kwargs, packed):
    """Gradients of gradients (a gradient penalty, create_graph=True), as torch's CPU LSTM gives them: the
    reference backend differentiates its backward again; every parameter, the input and h0 / c0."""
    ref, ours = twin_lstms(3, 4, **kwargs)
    bf = kwargs.get("batch_first", False)
    T, B, L = 5, 3, kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    x = torch.randn((B, T, 3) if bf else (T, B, 3), dtype=torch.float64)
    P = kwargs.get("proj_size") or 4
    hx = (torch.randn(L, B, P, dtype=torch.float64), torch.randn(L, B, 4, dtype=torch.float64))
    results = []
    for m in (ref, ours):
        xi, h0, c0 = (t.clone().requires_grad_() for t in (x, *hx))
        inp = pack_padded_sequence(xi, torch.tensor([5, 2, 4]), batch_first=bf, enforce_sorted=False) if packed else xi
        y, (h, c) = m(inp, (h0, c0))
        y = pad_packed_sequence(y, batch_first=bf)[0] if packed else y
        wrt = [xi, h0, c0, *m.parameters()]
        first = torch.autograd.grad(y.square().sum() + (h.sum(-1) * c.sum(-1)).sum(), wrt, create_graph=True)
        results.append(torch.autograd.grad(sum(g.square().sum() for g in first), wrt))
    for i, (got, want) in enumerate(zip(results[1], results[0])):
        assert_close(got, want, 1e-9, what=f"second-order gradient {i}")


def test_double_backward_of_a_kernel_backend_says_where_it_is_supported():
    """A kernel backend computes first-order gradients under create_graph=True (equal to torch's), but
    differentiating them again raises an error naming the backend, not a silent zero or a bare autograd one."""
    ref, ours = twin_lstms(3, 4, backend="triton")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(m(x)[0].square().sum(), x, create_graph=True)[0] for m in (ref, ours)]
    assert_close(grads[1], grads[0], TOL, what="first-order gradient under create_graph")
    with pytest.raises(RuntimeError, match="'triton' backend's gradients cannot be differentiated again"):
        torch.autograd.grad(grads[1].sum(), x)
    stacked = lstm_gpu.LSTM(3, 4, num_layers=2, backend="triton", stack=True).double()
    assert stacked.backend_for(x).startswith("triton")
    g, = torch.autograd.grad(stacked(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="stack's gradients .* cannot be differentiated again"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True}, {"proj_size": 2}])
def test_unbatched_input(kwargs):
    ref, ours = twin_lstms(3, 4, **kwargs)
    x = torch.randn(5, 3, dtype=torch.float64)
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx = (torch.randn(L, kwargs.get("proj_size") or 4, dtype=torch.float64), torch.randn(L, 4, dtype=torch.float64))
    for h in (None, hx):
        (ref_out, ref_g), (our_out, our_g) = run_both(ref, ours, x, h)
        for a, b in zip(our_out, ref_out):
            assert_close(a, b, TOL, what="unbatched output")
        for name in ref_g:
            assert_close(our_g[name], ref_g[name], TOL, what=f"grad {name}")


@pytest.mark.parametrize("kwargs", [{}, {"bidirectional": True, "num_layers": 2}, {"proj_size": 2},
                                    {"batch_first": True}])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_matches_nn_lstm(kwargs, enforce_sorted):
    ref, ours = twin_lstms(3, 5, **kwargs)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([2, 6, 1, 4])
    T, B = 6, 4
    bf = kwargs.get("batch_first", False)
    x = torch.randn((B, T, 3) if bf else (T, B, 3), dtype=torch.float64)
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    P = kwargs.get("proj_size") or 5
    hx0 = (torch.randn(L, B, P, dtype=torch.float64), torch.randn(L, B, 5, dtype=torch.float64))
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        hx = tuple(h.clone().requires_grad_() for h in hx0)
        packed = pack_padded_sequence(xi, lengths, batch_first=bf, enforce_sorted=enforce_sorted)
        out, (h, c) = m(packed, hx)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        padded, out_lengths = pad_packed_sequence(out, batch_first=bf)
        (padded.sum() + (h * h).sum() + (c * 3).sum()).backward()
        results.append(((padded, h, c, out.data), [xi.grad, *(t.grad for t in hx)],
                        {n: p.grad for n, p in m.named_parameters()}, out))
    (ro, rg, rpg, rpacked), (oo, og, opg, opacked) = results
    assert torch.equal(rpacked.batch_sizes, opacked.batch_sizes)
    assert torch.equal(rpacked.sorted_indices, opacked.sorted_indices) if rpacked.sorted_indices is not None \
        else opacked.sorted_indices is None
    for a, b in zip(oo, ro):
        assert_close(a, b, TOL, what="packed output")
    for a, b in zip(og, rg):
        assert_close(a, b, TOL, what="packed input grad")
    for n in rpg:
        assert_close(opg[n], rpg[n], TOL, what=f"packed grad {n}")


def test_dropout_between_layers_in_training():
    """dropout=1 zeroes every layer's input but the first: outputs equal nn.LSTM's exactly; eval ignores it."""
    ref, ours = twin_lstms(3, 4, num_layers=3, dropout=1.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for train in (True, False):
        ref.train(train), ours.train(train)
        for a, b in zip(ours(x)[0:1] + ours(x)[1], ref(x)[0:1] + ref(x)[1]):
            assert_close(a, b, TOL, what=f"dropout training={train}")


def test_dropout_is_random_in_training_and_off_in_eval():
    _, ours = twin_lstms(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ours.train()
    assert not torch.equal(ours(x)[0], ours(x)[0])
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])


def test_gradcheck_through_the_module():
    _, ours = twin_lstms(2, 3, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(ours.parameters())

    def f(x, h0, c0, *ps):
        y, (h, c) = torch.func.functional_call(ours, dict(zip([n for n, _ in ours.named_parameters()], ps)),
                                               (x, (h0, c0)))
        return y, h, c
    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))


def test_gradcheck_functional_with_lengths_and_reverse():
    T, B, I, H = 4, 3, 2, 3
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(4 * H, I, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(4 * H, H, dtype=torch.float64, requires_grad=True)
    b_ih, b_hh = (torch.randn(4 * H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3])
    for reverse in (False, True):
        def f(*args):
            y, (h, c) = lstm_gpu.lstm(*args, lengths=lengths, reverse=reverse, backend="reference")
            return y, h, c
        assert torch.autograd.gradcheck(f, (x, w_ih, w_hh, b_ih, b_hh, h0, c0))


def test_state_dict_round_trips_with_nn_lstm():
    ref, _ = twin_lstms(3, 6, num_layers=2, bidirectional=True, proj_size=4)
    ours = lstm_gpu.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4).double()
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4).double()
    back.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])


def test_same_parameters_init_and_repr_as_nn_lstm():
    kwargs = dict(num_layers=2, bias=False, batch_first=True, dropout=0.1, bidirectional=True, proj_size=3)
    torch.manual_seed(3)
    ref = torch.nn.LSTM(5, 7, **kwargs)
    torch.manual_seed(3)
    ours = lstm_gpu.LSTM(5, 7, **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b)
    assert repr(ours) == "lstm_gpu." + repr(ref)[:-1] + ", backend='auto')"
    assert repr(lstm_gpu.LSTM(2, 3, backend="reference")) == "lstm_gpu.LSTM(2, 3, backend='reference')"


def test_positional_arguments_like_nn_lstm():
    ours = lstm_gpu.LSTM(3, 4, 2, False, True, 0.0, True)
    assert (ours.num_layers, ours.bias, ours.batch_first, ours.bidirectional) == (2, False, True, True)


def test_empty_batch_like_nn_lstm():
    ref, ours = twin_lstms(3, 4, num_layers=2)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x), ours(x)
    assert y1.shape == y2.shape and h1.shape == h2.shape and c1.shape == c2.shape


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_masks_equal_nn_lstm_on_cpu_with_the_same_seed(bidirectional):
    """On CPU torch's LSTM draws its dropout masks with F.dropout between layers, as we do: same seed, same
    masks, same outputs and gradients."""
    ref, ours = twin_lstms(3, 4, num_layers=3, dropout=0.5, bidirectional=bidirectional)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        torch.manual_seed(7)
        y, (h, c) = m(x)
        (y.sum() + h.sum()).backward()
        results.append([y, h, c] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert_close(a, b, TOL, what="dropout=0.5")
