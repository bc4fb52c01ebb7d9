"""The Triton LSTM on a real GPU (marker ``gpu``: ``pytest -m gpu``; skipped without CUDA).

Many-program runs (the grid barrier for real) vs the float64 reference and vs PyTorch's own LSTM in the
same dtype, for H in {256, 512, 1024, 1536}, B in {1, 8, 64}, T in {1, 257, 2048}, every dtype the dispatcher
accepts; forward and backward. Low precision (and fp32): our error vs the float64 reference must be at most
2x the error PyTorch's own LSTM (cuDNN) makes in that dtype (3x for gradients), plus a small floor.
Also: the contract tensors (gates, cells, dgates) with lengths and reverse, 1000 back-to-back launches
without a hang, CUDA-graph replay. Versions are printed first. Written before any GPU run: expect to fix.
"""
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lstm_gpu
from lstm_gpu import reference
from lstm_gpu.kernels import triton_config, triton_lstm
from helpers import packed_bidirectional_vs_torch

pytestmark = pytest.mark.gpu
DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def test_print_versions():
    import triton
    props = torch.cuda.get_device_properties(0)
    print(f"\nGPU {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, triton {triton.__version__}, "
          f"fp32 precision {triton_config.fp32_precision()}")


@functools.lru_cache(maxsize=4)
def problem(H, B, T):
    """Inputs in float64 and the float64 reference outputs and gradients (backend="reference")."""
    g = torch.Generator(device=DEV).manual_seed(H * 7919 + B * 31 + T)
    I = 32
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g, device=DEV, dtype=torch.float64) * scale  # noqa: E731
    k = H ** -0.5
    args = [r(T, B, I), r(4 * H, I, scale=k), r(4 * H, H, scale=k), r(4 * H, scale=k), r(4 * H, scale=k),
            r(B, H, scale=0.5), r(B, H, scale=0.5)]
    dy, dh, dc = r(T, B, H), r(B, H), r(B, H)
    outs, grads = run(args, torch.float64, "reference", dy, dh, dc)
    return args, (dy, dh, dc), outs, grads


def run(args, dtype, backend, dy, dh, dc):
    leaves = [a.detach().to(dtype).requires_grad_() for a in args]
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = leaves
    y, (h_n, c_n) = lstm_gpu.lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, backend=backend)
    loss = (y * dy.to(dtype)).sum() + (h_n * dh.to(dtype)).sum() + (c_n * dc.to(dtype)).sum()
    loss.backward()
    return [t.detach() for t in (y, h_n, c_n)], [t.grad for t in leaves]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("T", [1, 257, 2048])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("H", [256, 512, 1024, 1536])     # 1536: 16-bit only, K as 1024 + 512
def test_vs_reference_and_torch(H, B, T, dtype):
    why = triton_lstm.unsupported(device=torch.device(DEV), dtype=dtype, hidden_size=H, batch=B)
    if why:
        pytest.skip(why)
    cfg = triton_config.choose_config(B=B, H=H, dtype=dtype, device=torch.device(DEV))
    assert cfg.num_programs > 1, "these sizes must exercise the grid barrier"
    args, (dy, dh, dc), ref_out, ref_grads = problem(H, B, T)
    ours_out, ours_grads = run(args, dtype, "triton", dy, dh, dc)
    torch_out, torch_grads = run(args, dtype, "cudnn", dy, dh, dc)
    names = ["y", "h_n", "c_n"] + ["dx", "dw_ih", "dw_hh", "db_ih", "db_hh", "dh0", "dc0"]
    report = []
    for i, (name, ours, theirs, ref) in enumerate(zip(names, ours_out + ours_grads, torch_out + torch_grads,
                                                      ref_out + ref_grads)):
        e_ours, e_torch = max_err(ours, ref), max_err(theirs, ref)
        scale = 2.0 if i < 3 else 3.0
        bound = scale * e_torch + FLOOR[dtype] * max(1.0, ref.abs().max().item())
        report.append(f"{name}: ours {e_ours:.2e} torch {e_torch:.2e}")
        assert e_ours <= bound, f"{name}: error {e_ours:.3g} > {bound:.3g} ({scale}x torch's {e_torch:.3g}); {cfg}"
    print(f"\nH={H} B={B} T={T} {dtype} {cfg}: " + "; ".join(report))


# (dtype, fp32 precision, tolerance): the broadcast path (fp32 ieee, fp64) and the tensor-core paths (fp16 with
# its 16-bit dz exchange, tf32), each with K split in chunks and, at B = 20, several batch tiles
CONTRACT = [(torch.float32, "ieee", 1e-4), (torch.float64, "ieee", 1e-10), (torch.float16, "ieee", 5e-2),
            (torch.float32, "tf32", 5e-2)]


@pytest.mark.parametrize("dtype,precision,tol", CONTRACT, ids=["float32", "float64", "float16", "tf32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,B", [(256, 5), (512, 3), (1000, 20)])
def test_contract_tensors_with_lengths(H, B, dtype, precision, tol, reverse, monkeypatch):
    """gates, cells, dgates, dh0, dc0 vs the reference, unsorted lengths, many programs, several batch tiles."""
    monkeypatch.setattr(triton_config, "FP32_PRECISION", precision)
    T = 37
    g = torch.Generator(device=DEV).manual_seed(H + B)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=DEV, dtype=torch.float64) * scale)  # noqa: E731
    gx, h0, c0, w = r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H ** -0.5)
    dy, dhn, dcn = r(T, B, H), r(B, H), r(B, H)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(B))
    lengths[0] = T
    ref = reference.forward(gx, h0, c0, w, None, lengths.to(DEV), reverse, True)
    ref_g = reference.backward(dy, dhn, dcn, ref[3], ref[4], h0, c0, ref[0], w, None, lengths.to(DEV), reverse)
    cast = lambda *ts: [t.to(dtype) for t in ts]  # noqa: E731
    out = triton_lstm.forward(*cast(gx, h0, c0, w), None, lengths.to(DEV), reverse, True)
    grads = triton_lstm.backward(*cast(dy, dhn, dcn), out[3], out[4], *cast(h0, c0), out[0], w.to(dtype), None,
                                 lengths.to(DEV), reverse)
    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"], list(out) + list(grads[:3]),
                          list(ref) + list(ref_g[:3])):
        assert max_err(a, b) <= tol, f"{name}: {max_err(a, b):.3g}"


def _forward_inputs(H, B, T=37):
    """fp64 gates_x, h0, c0, W_hh on the GPU (seeded by H and B) and unsorted lengths, the first row T long."""
    g = torch.Generator(device=DEV).manual_seed(H + B)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=DEV, dtype=torch.float64) * scale)  # noqa: E731
    gx, h0, c0, w = r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H ** -0.5)
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(B))
    lengths[0] = T
    return gx, h0, c0, w, lengths


@pytest.mark.parametrize("polled", [True, False], ids=["polled", "counter"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,B", [(256, 1), (768, 16), (1000, 5)])
def test_h_exchange_with_lengths(H, B, reverse, polled, monkeypatch):
    """The forward with h exchanged in write-once slots (``polled_h``: no step counter, the readers poll
    the data; the configs' choice at one batch tile) or through the step counter (the switch
    the GPU session's "triton-counter" column sets), fp16, many programs: every output vs the reference,
    unsorted lengths."""
    monkeypatch.setattr(triton_config, "POLLED_H", polled)
    gx, h0, c0, w, lengths = _forward_inputs(H, B)
    cfg = triton_config.choose_config(B=B, H=H, dtype=torch.float16, device=torch.device(DEV))
    assert cfg.polled_exchange(torch.float16) == polled and cfg.num_programs > 1, cfg
    ref = reference.forward(gx, h0, c0, w, None, lengths.to(DEV), reverse, True)
    half = [t.half() for t in (gx, h0, c0, w)]
    out = triton_lstm.lstm_fwd(*half, lengths.to(DEV), reverse, True, config=cfg)
    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert max_err(a, b) <= 5e-2, f"{name}: {max_err(a, b):.3g} ({cfg})"


@pytest.mark.parametrize("folded", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("H,B", [(256, 1), (768, 16), (1000, 5), (1024, 16)])
def test_folded_forward_with_lengths(H, B, dtype, folded, monkeypatch):
    """The forward with K folded into M and W_hh in registers (``LSTMConfig.fold``: the configs' choice for 16-bit
    16-row tiles at H ≤ 1024) and without it (the switch the GPU session's "triton-unfolded" column sets), many
    programs, polled or through the counter as the configs choose: every output vs the reference, unsorted lengths."""
    monkeypatch.setattr(triton_config, "FOLDED_GATES", folded)
    gx, h0, c0, w, lengths = _forward_inputs(H, B)
    cfg = triton_config.choose_config(B=B, H=H, dtype=dtype, device=torch.device(DEV))
    assert (cfg.fold == 2) == folded and cfg.num_programs > 1, cfg
    low = [t.to(dtype) for t in (gx, h0, c0, w)]
    ref = reference.forward(*[t.double() for t in low], None, lengths.to(DEV), reverse=False, save=True)
    out = triton_lstm.lstm_fwd(*low, lengths.to(DEV), False, True, config=cfg)
    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert max_err(a, b) <= 5e-2, f"{name}: {max_err(a, b):.3g} ({cfg})"


@pytest.mark.parametrize("polled", [True, False], ids=["polled", "counter"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H,B", [(256, 3), (768, 16), (512, 16)])
def test_dz_exchange_with_lengths(H, B, reverse, polled, monkeypatch):
    """The backward with dz exchanged in write-once slots (``polled_backward``: no step counter; the configs'
    choice at one 16-row tile where the four gates' loads go out together, 8 warps with a tail piece at H = 768)
    or through the step counter, fp16, many programs: dgates, dh0, dc0 vs the reference, unsorted lengths, the
    upstream gradients zero at the last steps (dz of ±0 there: a -0.0 must not read as unwritten)."""
    monkeypatch.setattr(triton_config, "POLLED_H", polled)
    T = 37
    g = torch.Generator(device=DEV).manual_seed(H + B + 1)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=DEV, dtype=torch.float64) * scale)  # noqa: E731
    gx, h0, c0, w = r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H ** -0.5)
    dy, dhn, dcn = r(T, B, H), torch.zeros(B, H, device=DEV, dtype=torch.float64), r(B, H) * 0
    dy[T - 3:] = 0
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(B))
    lengths[0] = T
    cfg = triton_config.choose_config(B=B, H=H, dtype=torch.float16, device=torch.device(DEV), backward=True)
    assert cfg.polled_backward(torch.float16) == polled and cfg.num_programs > 1, cfg
    half = [t.half() for t in (gx, h0, c0, w, dy, dhn, dcn)]
    out = triton_lstm.lstm_fwd(*half[:4], lengths.to(DEV), reverse, True)
    ref = reference.backward(dy, dhn, dcn, out[3].double(), out[4].double(), h0, c0, out[0].double(), w, None,
                             lengths.to(DEV), reverse)
    got = triton_lstm.lstm_bwd(*half[4:], out[3], out[4], half[2], half[3], lengths.to(DEV), reverse, config=cfg)
    for name, a, b in zip(["dgates", "dh0", "dc0"], got, ref):
        assert max_err(a, b) <= 5e-2, f"{name}: {max_err(a, b):.3g} ({cfg})"


def test_1000_back_to_back_launches_do_not_hang():
    """A hang cannot be caught in-process: run it in a subprocess with a timeout."""
    code = textwrap.dedent("""
        import torch
        from lstm_gpu.kernels import triton_lstm
        H, B, T = 1024, 8, 4
        gx = torch.randn(T, B, 4 * H, device="cuda"); h0 = torch.zeros(B, H, device="cuda")
        w = torch.randn(4 * H, H, device="cuda") * H ** -0.5
        first = triton_lstm.forward(gx, h0, h0, w, None, None, False, False)[0].clone()
        for i in range(1000):
            y = triton_lstm.forward(gx, h0, h0, w, None, None, i % 2 == 1, i % 3 == 0)[0]
            g = triton_lstm.backward(y, h0, h0, *triton_lstm.forward(gx, h0, h0, w, None, None, False, True)[3:],
                                     h0, h0, y, w, None, None, False) if i % 100 == 0 else None
        torch.cuda.synchronize()
        again = triton_lstm.forward(gx, h0, h0, w, None, None, False, False)[0]
        assert torch.equal(first, again), "not deterministic across launches"
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]


def test_cuda_graph_replay():
    H, B, T = 512, 8, 16
    gx = torch.randn(T, B, 4 * H, device=DEV)
    h0 = torch.randn(B, H, device=DEV)
    w = torch.randn(4 * H, H, device=DEV) * H ** -0.5
    want = triton_lstm.forward(gx, h0, h0, w, None, None, False, False)[0].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        triton_lstm.forward(gx, h0, h0, w, None, None, False, False)      # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_lstm.forward(gx, h0, h0, w, None, None, False, False)[0]
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want)


def test_projection_folded_into_w_hh_vs_cudnn():
    """proj_size > 0 on the GPU: the kernel runs the LSTM with W_hr folded into W_hh (lstm_gpu/functional.py),
    many programs; 2 layers, bidirectional, packed unsorted, h0/c0: every output and gradient against nn.LSTM
    (cuDNN) in float64."""
    packed_bidirectional_vs_torch("triton", T=33, B=5, I=16, H=128, proj_size=64, lengths=torch.tensor([33, 2, 17, 1, 30]),
                                  dtype=torch.float64, tol=1e-9, device=DEV)
