"""The custom ops (opcheck), the functional entry point, the backend choice and the "cudnn" backend."""
import pytest
import torch

import lstm_gpu
from lstm_gpu import ops
from helpers import assert_close, twin_lstms


def layer_args(T=4, B=3, H=5, P=None, lengths=None, requires_grad=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    P = P or H
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    w_hr = mk(P, H) if P != H else None
    return (mk(T, B, 4 * H), mk(B, P), mk(B, H), mk(4 * H, P), w_hr, lengths)


CASES = [
    dict(),
    dict(lengths=torch.tensor([4, 2, 1])),
    dict(lengths=torch.tensor([1, 4, 3])),
    dict(P=3),
    dict(P=3, lengths=torch.tensor([3, 3, 2])),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_layer_fwd(case, reverse):
    args = layer_args(**case)
    torch.library.opcheck(ops.layer_fwd, (*args, reverse, "reference", True))


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_layer_fwd_without_saving(reverse):
    args = layer_args(requires_grad=False, lengths=torch.tensor([4, 2, 2]))
    torch.library.opcheck(ops.layer_fwd, (*args, reverse, "reference", False))


@pytest.mark.parametrize("case", CASES)
def test_opcheck_layer_bwd(case):
    gates_x, h0, c0, w_hh, w_hr, lengths = layer_args(requires_grad=False, **case)
    y, h_n, c_n, gates, cells = ops.layer_fwd(gates_x, h0, c0, w_hh, w_hr, lengths, True, "reference", True)
    dy, dh, dc = torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n)
    torch.library.opcheck(ops.layer_bwd, (dy, dh, dc, gates, cells, h0, c0, y, w_hh, w_hr, lengths, True,
                                          "reference"))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 2, 3, 1])])
@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("backend", ["reference", "cudnn", "triton", "numba"])
def test_functional_matches_torch_single_direction(reverse, lengths, proj, backend):
    """lstm_gpu.lstm for one direction == the matching half of a bidirectional nn.LSTM (the kernel backends
    in their CPU emulators; a projection runs folded into W_hh there, its h0 added at each sequence's first
    step, which walking in reverse with lengths is not t = 0 nor T - 1)."""
    T, B, I, H = 5, 4, 3, 4
    try:
        lstm_gpu.select_backend(backend, device="cpu", dtype=torch.float64, hidden_size=H)
    except ValueError as e:
        pytest.skip(str(e))
    ref = torch.nn.LSTM(I, H, bidirectional=True, proj_size=proj).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    P = proj or H
    h0, c0 = torch.randn(2, B, P, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    if lengths is None:
        y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h_ref, c_ref) = ref(packed, (h0, c0))
        y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    d = 1 if reverse else 0
    sfx = "_l0_reverse" if reverse else "_l0"
    w = lambda n: getattr(ref, n + sfx, None)  # noqa: E731
    y, (h, c) = lstm_gpu.lstm(x, w("weight_ih"), w("weight_hh"), w("bias_ih"), w("bias_hh"), h0[d], c0[d],
                              weight_hr=w("weight_hr"), lengths=lengths, reverse=reverse, backend=backend)
    assert_close(y, y_ref[..., d * P:(d + 1) * P], 1e-12, what="y")
    assert_close(h, h_ref[d], 1e-12, what="h_n")
    assert_close(c, c_ref[d], 1e-12, what="c_n")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]])
def test_gradgradcheck_reference(case, reverse):
    """The op's second derivatives (create_graph=True on the reference backend) by finite differences."""
    *args, lengths = layer_args(T=3, B=3, H=2, **case)
    w_hr = args[4]

    def f(gates_x, h0, c0, w_hh, *w_hr_):
        y, h_n, c_n, _, _ = ops.layer_fwd(gates_x, h0, c0, w_hh, w_hr_[0] if w_hr_ else None, lengths, reverse,
                                          "reference", True)
        return y, h_n, c_n
    inputs = tuple(args[:4]) + ((w_hr,) if w_hr is not None else ())
    assert torch.autograd.gradgradcheck(f, inputs)
    # gradgradcheck trusts the first-order gradients it differentiates: they must equal layer_bwd's
    outs = f(*inputs)
    cotangents = [torch.randn_like(o) for o in outs]
    graph = torch.autograd.grad(outs, inputs, cotangents, create_graph=True)
    plain = torch.autograd.grad(f(*inputs), inputs, cotangents)
    for a, b in zip(graph, plain):
        assert_close(a, b, 1e-12, what="first-order gradient under create_graph")


def test_cudnn_backend_module_matches_nn_lstm():
    ref, ours = twin_lstms(3, 5, num_layers=2, bidirectional=True, backend="cudnn")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for a, b in zip((ours(x)[0], *ours(x)[1]), (ref(x)[0], *ref(x)[1])):
        assert torch.equal(a, b)


def test_auto_backend_is_inspectable():
    m = lstm_gpu.LSTM(3, 4)
    assert m.backend_for(torch.randn(2, 1, 3)) == "cudnn"          # on the CPU: torch's own LSTM
    assert lstm_gpu.select_backend("auto", device="cpu", dtype=torch.float32, hidden_size=4) == "cudnn"
    assert lstm_gpu.select_backend("auto", device="cuda", dtype=torch.float32, hidden_size=10**6) == "cudnn"


def test_inference_does_not_save_activations():
    args = layer_args(requires_grad=False)
    _, _, _, gates, cells = ops.layer_fwd(*args, False, "reference", False)
    assert gates.numel() == 0 and cells.numel() == 0
    with torch.no_grad():
        lstm_gpu.LSTM(3, 4)(torch.randn(2, 1, 3))


def test_op_autocast_runs_in_the_autocast_dtype():
    gates_x, h0, c0, w_hh, _, _ = layer_args(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h_n, c_n, gates, cells = ops.layer_fwd(gates_x, h0, c0, w_hh, None, None, False, "reference", True)
    assert y.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    assert gates.dtype == cells.dtype == torch.float32       # saved state stays in the accumulation dtype
    y.float().sum().backward()
    assert w_hh.grad.dtype == torch.float32 and gates_x.grad.dtype == torch.float32


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", ["reference", "cudnn", "triton", "numba"])
def test_padding_never_reaches_a_gradient(backend, reverse):
    """NaN or inf in the padding (t >= lengths[b]) of lstm(): outputs and every gradient as with zero padding.
    x·W_ihᵀ ran over the padding and autograd's dW_ih = dgatesᵀ·x took 0·NaN: weight_ih.grad was all NaN on the
    reference, triton and numba (torch's packed LSTM, "cudnn", never reads the padding)."""
    T, B, I, H = 4, 3, 3, 4
    lengths = torch.tensor([4, 1, 2])
    pad = torch.arange(T)[:, None] >= lengths[None, :]
    results = []
    for fill in (0.0, float("nan"), float("inf")):
        torch.manual_seed(0)
        x = torch.randn(T, B, I, dtype=torch.float64).masked_fill(pad[..., None], fill).requires_grad_()
        w = [torch.randn(4 * H, n, dtype=torch.float64, requires_grad=True) for n in (I, H)]
        y, (h, c) = lstm_gpu.lstm(x, *w, lengths=lengths, reverse=reverse, backend=backend)
        (y.sum() + h.sum() + c.sum()).backward()
        results.append([y, h, c, x.grad.masked_fill(pad[..., None], 0), w[0].grad, w[1].grad])
    for filled in results[1:]:
        for name, got, want in zip(["y", "h_n", "c_n", "dx", "dW_ih", "dW_hh"], filled, results[0]):
            assert_close(got, want, 1e-12, what=f"{name} with non-finite padding")


@pytest.mark.parametrize("backend", ["reference", "cudnn", "triton", "numba"])
def test_an_empty_batch_runs_forward_and_backward(backend):
    """B = 0: empty outputs and zero gradients, as nn.LSTM gives (the weight gradient's reshape of 0 rows to
    [0, -1] raised), also with lengths (torch cannot pack an empty batch: "cudnn" raised)."""
    m = lstm_gpu.LSTM(3, 4, num_layers=2, bidirectional=True, backend=backend).double()
    y, (h, c) = m(torch.randn(5, 0, 3, dtype=torch.float64))
    assert y.shape == (5, 0, 8) and h.shape == (4, 0, 4)
    (y.sum() + h.sum() + c.sum()).backward()
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    w = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64))
    y, _ = lstm_gpu.lstm(torch.randn(5, 0, 3, dtype=torch.float64), *w, lengths=torch.zeros(0, dtype=torch.int64),
                         backend=backend)
    assert y.shape == (5, 0, 4)
