"""CUDA-only parts of "works where PyTorch users work": CUDA graphs, CUDA autocast and torch.compile with
every backend. Marker ``gpu``: run with ``pytest -m gpu`` on a machine with CUDA."""
import pytest
import torch

from helpers import assert_close, skip_unless_runs_on_cuda, twin_lstms

pytestmark = pytest.mark.gpu
BACKENDS = ["reference", "triton", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_capture_and_replay_forward_backward(backend):
    skip_unless_runs_on_cuda(backend)
    ref, ours = twin_lstms(32, 64, num_layers=2, backend=backend, dtype=torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    static_x = torch.randn(16, 8, 32, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                     # warm up (compiles the kernels) outside the graph
        for _ in range(2):
            ours(static_x)[0].sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    ours.zero_grad(set_to_none=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, _ = ours(static_x)
        static_y.square().sum().backward()
    for _ in range(3):                                # replays with new data; barrier state must survive
        x = torch.randn_like(static_x)
        with torch.no_grad():
            static_x.copy_(x)
        ours.zero_grad(set_to_none=False)
        static_x.grad.zero_()
        graph.replay()
        ref.zero_grad()
        xr = x.clone().requires_grad_()
        y_ref, _ = ref(xr)
        y_ref.square().sum().backward()
        assert_close(static_y, y_ref, 1e-4, what="graph output")
        assert_close(static_x.grad, xr.grad, 1e-4, what="graph dx")
        assert_close(ours.weight_hh_l0.grad, ref.weight_hh_l0.grad, 1e-3, rtol=1e-4, what="graph dW_hh")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_like_nn_lstm(backend, dtype):
    skip_unless_runs_on_cuda(backend, dtype)
    ref, ours = twin_lstms(32, 64, num_layers=2, backend=backend, dtype=torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(20, 4, 32, device="cuda")
    exact, _ = ref(x)
    errs = []
    for m in (ref, ours):
        with torch.autocast("cuda", dtype=dtype):
            y, (h, c) = m(x)
        assert y.dtype == h.dtype == c.dtype == dtype
        y.float().square().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())
        errs.append((y.float() - exact).abs().max().item())
    assert errs[1] <= 2 * errs[0] + 1e-3, f"{backend} {dtype}: error {errs[1]:.2e} vs nn.LSTM's {errs[0]:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_with_kernel_backends(backend):
    skip_unless_runs_on_cuda(backend)
    torch._dynamo.reset()
    ref, ours = twin_lstms(16, 64, num_layers=2, bidirectional=True, backend=backend, dtype=torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    compiled = torch.compile(ours, fullgraph=True)
    for T in (9, 33):
        x = torch.randn(T, 4, 16, device="cuda")
        y, _ = compiled(x)
        y.sum().backward()
        assert_close(y, ref(x)[0], 1e-4, what=f"compiled {backend} T={T}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_per_sample_gradients_on_cuda(backend):
    """vmap of torch.func.grad (per-sample gradients) through the kernels on CUDA, against nn.LSTM's per sample
    (the CPU test runs the emulators)."""
    from torch.func import functional_call, grad, vmap
    skip_unless_runs_on_cuda(backend)
    ref, ours = twin_lstms(16, 64, num_layers=2, bidirectional=True, backend=backend, dtype=torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x = torch.randn(12, 3, 16, device="cuda")

    def loss(module):
        return lambda p, x: functional_call(module, p, (x.unsqueeze(1),))[0].square().sum()
    got = vmap(grad(loss(ours)), in_dims=(None, 1))(params, x)
    for i in range(x.shape[1]):
        want = grad(loss(ref))(params, x[:, i])
        for k in params:
            assert_close(got[k][i], want[k], 1e-3, rtol=1e-4, what=f"per-sample gradient {i} of {k}")
