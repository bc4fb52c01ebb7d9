"""Backend "numba" on a real GPU: many blocks, against the fp64 reference and cuDNN; the compiled
kernels' registers, local and shared memory; 1000 back-to-back launches without a hang.

Marker ``gpu`` (skipped without CUDA). Run: ``pytest -m gpu tests/test_numba_gpu.py -s`` (``-s`` shows the
versions and resource table). WRITTEN WITHOUT A GPU AND NEVER RUN YET: a failure here may be the test's
fault as much as the kernel's; read it before trusting either.

Tolerance rule: with the fp64 reference as truth, our error ≤ 2× the error of PyTorch's own
LSTM in the same dtype for outputs, 3× for gradients (plus a small floor relative to the values).
"""
import os
import subprocess
import sys

import pytest
import torch

import lstm_gpu
from lstm_gpu.kernels import numba_lstm
from helpers import packed_bidirectional_vs_torch

pytestmark = pytest.mark.gpu

I = 64
FLOOR = {torch.float64: 1e-11, torch.float32: 1e-6, torch.float16: 1e-4}   # × max |reference|


def _master(T, B, H, seed=0):
    """fp64 inputs on CPU at nn.LSTM's init scale, and fixed output gradients."""
    g = torch.Generator().manual_seed(seed)
    k = H ** -0.5
    u = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * k  # noqa: E731
    n = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(x=n(T, B, I), w_ih=u(4 * H, I), w_hh=u(4 * H, H), b_ih=u(4 * H), b_hh=u(4 * H),
                h0=n(B, H) * 0.5, c0=n(B, H) * 0.5, dy=n(T, B, H), dh=n(B, H), dc=n(B, H))


def _run(backend, dtype, m, lengths=None, reverse=False):
    """Outputs (y, h_n, c_n) and gradients (x, w_ih, w_hh, b_ih, b_hh, h0, c0) as fp64 on CPU."""
    names = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")
    leaves = {k: m[k].detach().to("cuda", dtype).requires_grad_() for k in names}
    y, (h, c) = lstm_gpu.lstm(leaves["x"], leaves["w_ih"], leaves["w_hh"], leaves["b_ih"], leaves["b_hh"],
                              leaves["h0"], leaves["c0"], lengths=lengths, reverse=reverse, backend=backend)
    f = lambda t, k: (t.float() * m[k].to("cuda", torch.float32)).sum()  # noqa: E731
    if dtype == torch.float64:
        f = lambda t, k: (t * m[k].to("cuda", dtype)).sum()  # noqa: E731
    (f(y, "dy") + f(h, "dh") + f(c, "dc")).backward()
    return ([t.detach().double().cpu() for t in (y, h, c)],
            [leaves[k].grad.double().cpu() for k in names])


def _compare(dtype, T, B, H, lengths=None, reverse=False):
    m = _master(T, B, H)
    ref_out, ref_grad = _run("reference", torch.float64, m, lengths, reverse)
    torch_out, torch_grad = _run("cudnn", dtype, m, lengths, reverse)
    out, grad = _run("numba", dtype, m, lengths, reverse)
    names = ["y", "h_n", "c_n", "dx", "dw_ih", "dw_hh", "db_ih", "db_hh", "dh0", "dc0"]
    factors = [2] * 3 + [3] * 7
    report = []
    for name, factor, ours, theirs, truth in zip(names, factors, out + grad, torch_out + torch_grad,
                                                 ref_out + ref_grad):
        e_ours = (ours - truth).abs().max().item()
        e_torch = (theirs - truth).abs().max().item()
        bound = factor * e_torch + FLOOR[dtype] * max(1.0, truth.abs().max().item())
        report.append(f"{name}: ours {e_ours:.2e} torch {e_torch:.2e} bound {bound:.2e}")
        assert e_ours <= bound, f"{dtype} T={T} B={B} H={H} {name}: error {e_ours:.3e} > {bound:.3e}\n" + \
            "\n".join(report)
    print(f"\n{dtype} T={T} B={B} H={H} lengths={lengths is not None} reverse={reverse}: " + "; ".join(report))


def test_print_versions():
    import numba
    from numba import cuda
    from numba.cuda.cudadrv import driver as drv
    dev = cuda.get_current_device()
    try:
        import numba_cuda
        ncuda = numba_cuda.__version__
    except (ImportError, AttributeError):
        ncuda = "?"
    print(f"\nGPU {torch.cuda.get_device_name()} cc {dev.compute_capability} SMs {dev.MULTIPROCESSOR_COUNT} "
          f"smem opt-in {dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN} B | torch {torch.__version__} "
          f"CUDA {torch.version.cuda} cuDNN {torch.backends.cudnn.version()} | numba {numba.__version__} "
          f"numba-cuda {ncuda} | CUDA driver API {drv.get_version()}")


@pytest.mark.parametrize("T", [1, 257, 2048])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("H", [256, 512, 1024])
def test_float32_many_blocks_vs_reference_and_cudnn(H, B, T):
    for kind in ("fwd", "bwd"):
        p = numba_lstm.plan(kind, torch.float32, H, B, torch.cuda.current_device())
        assert isinstance(p, numba_lstm.Plan) and p.blocks > 1, p
    _compare(torch.float32, T, B, H)


@pytest.mark.parametrize("B", [8, 64])
@pytest.mark.parametrize("H", [256, 1024])
def test_float16_within_twice_pytorch_fp16_error(H, B):
    _compare(torch.float16, 257, B, H)


@pytest.mark.parametrize("H", [256, 512])
def test_float64(H):
    _compare(torch.float64, 257, 8, H)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_lengths_and_reverse_many_blocks(dtype, reverse):
    lengths = torch.tensor([257, 3, 100, 1, 256, 17, 257, 64])        # unsorted, extremes included
    _compare(dtype, 257, 8, 256, lengths=lengths, reverse=reverse)


def test_compiled_resources_registers_spills_shared_memory():
    """Registers, local memory (spills/stack) and static shared memory of every compiled kernel, and
    every planned grid within the co-residency limit and the shared-memory opt-in limit."""
    from numba import cuda
    dev = cuda.get_current_device()
    limit = dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    for dtype in numba_lstm.SUPPORTED_DTYPES:
        for kind in ("fwd", "bwd"):
            k = numba_lstm.compiled(kind, dtype)
            regs, local, static = k.regs_per_thread, k.local_mem_per_thread, k.shared_mem_per_block
            print(f"\n{kind} {dtype}: {regs} registers/thread, {local} B local/thread, {static} B static shared, "
                  f"max {k.max_threads_per_block} threads/block")
            # linked for sm_90 on a CPU (nvlink, cudadevrt): "16 stack" (the frame of grid.sync's call into
            # cudadevrt, as a 6-line kernel with grid.sync shows) and a 1 KB .nv.shared section; not spills
            assert local <= 16, f"{kind} {dtype}: {local} bytes of local memory per thread (spills?)"
            assert regs * numba_lstm.THREADS <= 65536 and k.max_threads_per_block >= numba_lstm.THREADS
            assert static <= 1024, f"{kind} {dtype}: unexpected static shared memory {static} B"
            for H in (256, 512, 1024):
                for B in (1, 8, 64):
                    p = numba_lstm.plan(kind, dtype, H, B, torch.cuda.current_device())
                    if isinstance(p, str):
                        assert dtype == torch.float64 and H == 1024, p
                        assert "limit" in p
                        continue
                    co = k.max_cooperative_grid_blocks(numba_lstm.THREADS, p.shared)
                    print(f"  H={H} B={B}: {p}, co-resident limit {co}")
                    assert p.shared + static <= limit and p.blocks <= co


def test_too_large_is_refused_with_the_limit():
    reason = numba_lstm.unsupported(device=torch.device("cuda"), dtype=torch.float32, hidden_size=4096,
                                    batch=8)
    assert reason is not None and "limit" in reason, reason
    x = torch.randn(3, 8, 16, device="cuda")
    w_ih, w_hh = torch.randn(4 * 4096, 16, device="cuda"), torch.randn(4 * 4096, 4096, device="cuda")
    with pytest.raises(ValueError, match="limit"):
        lstm_gpu.lstm(x, w_ih, w_hh, backend="numba")
    assert "bfloat16" in numba_lstm.unsupported(device=torch.device("cuda"), dtype=torch.bfloat16,
                                                hidden_size=256, batch=8)


def test_side_stream_gives_the_same_bits():
    m = _master(64, 8, 256)
    args = [m[k].to("cuda", torch.float32) for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    with torch.no_grad():
        y0, _ = lstm_gpu.lstm(*args, backend="numba")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y1, _ = lstm_gpu.lstm(*args, backend="numba")
        torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(y0, y1)


_BACK_TO_BACK = r"""
import torch, lstm_gpu
torch.manual_seed(0)
T, B, H = 16, 8, 256
x = torch.randn(T, B, 32, device="cuda")
w_ih, w_hh = torch.randn(4 * H, 32, device="cuda") * 0.1, torch.randn(4 * H, H, device="cuda") * 0.06
with torch.no_grad():
    first, _ = lstm_gpu.lstm(x, w_ih, w_hh, backend="numba")
    for _ in range(999):
        y, _ = lstm_gpu.lstm(x, w_ih, w_hh, backend="numba")
torch.cuda.synchronize()
assert torch.equal(first, y), "results changed across launches"
print("1000 launches ok")
"""


def test_1000_back_to_back_launches_do_not_hang():
    """In a subprocess with a timeout, so a deadlocked grid barrier fails the test instead of the run."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", _BACK_TO_BACK], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1000 launches ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_projection_folded_into_w_hh_vs_cudnn():
    """proj_size > 0 on the GPU: the kernel runs the LSTM with W_hr folded into W_hh (lstm_gpu/functional.py),
    many programs; 2 layers, bidirectional, packed unsorted, h0/c0: every output and gradient against nn.LSTM
    (cuDNN) in float64."""
    packed_bidirectional_vs_torch("numba", T=33, B=5, I=16, H=128, proj_size=64, lengths=torch.tensor([33, 2, 17, 1, 30]),
                                  dtype=torch.float64, tol=1e-9, device="cuda")
