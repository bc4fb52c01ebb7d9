"""Backend "numba" in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): the one-block configuration
of the persistent kernels, against lstm_gpu.reference, tensor for tensor.

The simulator runs a Python thread per CUDA thread, so shapes are tiny (T ≤ 4, H ≤ 8, B ≤ 2) and
blocks small (32-64 threads). What it cannot show (many blocks, speed, real shuffles, registers and
shared memory) is in tests/test_numba_gpu.py.
"""
import pytest
import torch

import lstm_gpu
from lstm_gpu import reference
from lstm_gpu.kernels import numba_kernels, numba_lstm
from helpers import assert_close

pytestmark = pytest.mark.skipif(not numba_kernels.SIMULATOR,
                                reason="the numba CPU tests need NUMBA_ENABLE_CUDASIM=1 (set when no CUDA)")

T, B, H = 4, 2, 8
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
CASES = {   # name: (h0/c0 random?, lengths, reverse)
    "zero_state": (False, None, False),
    "state": (True, None, False),
    "lengths_unsorted": (True, [2, 4], False),
    "reverse": (True, None, True),
    "reverse_lengths": (True, [4, 1], True),
}


def _inputs(dtype, random_state, seed=0, T=T, B=B, H=H):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    gates_x, w_hh = r(T, B, 4 * H), r(4 * H, H) * 0.4
    h0, c0 = (r(B, H), r(B, H)) if random_state else (torch.zeros(B, H, dtype=dtype),) * 2
    grads = r(T, B, H), r(B, H), r(B, H)             # dy, dh_n, dc_n
    return gates_x, h0, c0, w_hh, grads


def _check_layer(dtype, random_state, lengths, reverse, tol=None, seed=0):
    tol = TOL[dtype] if tol is None else tol
    gates_x, h0, c0, w_hh, (dy, dh_n, dc_n) = _inputs(dtype, random_state, seed)
    lengths = None if lengths is None else torch.tensor(lengths)
    out = numba_lstm.forward(gates_x, h0, c0, w_hh, None, lengths, reverse, True)
    ref = reference.forward(gates_x, h0, c0, w_hh, None, lengths, reverse, True)
    for name, a, b in zip(("y", "h_n", "c_n", "gates", "cells"), out, ref):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        assert_close(a, b, tol, what=name)
    _, _, _, gates, cells = ref
    grads = numba_lstm.backward(dy, dh_n, dc_n, gates, cells, h0, c0, ref[0], w_hh, None, lengths, reverse)
    ref_grads = reference.backward(dy, dh_n, dc_n, gates, cells, h0, c0, ref[0], w_hh, None, lengths, reverse)
    for name, a, b in zip(("dgates", "dh0", "dc0"), grads, ref_grads):
        assert_close(a.to(b.dtype), b, tol, what=name)
    assert grads[3] is None


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(dtype, case):
    _check_layer(dtype, *CASES[case])


@pytest.mark.parametrize("lanes,threads", [(8, 32), (32, 32), (4, 64)])
def test_shuffle_tree_group_sizes(monkeypatch, lanes, threads):
    """Threads per dot product > 1 (the GPU's shuffle tree, emulated) and two warps per block."""
    monkeypatch.setattr(numba_lstm, "SIM_LANES", lanes)
    monkeypatch.setattr(numba_lstm, "SIM_THREADS", threads)
    _check_layer(torch.float32, True, [3, 4], False)


def test_float16_accumulates_in_float32():
    """fp16 storage, fp32 state: close to the reference run on the same fp16 inputs (which keeps h in
    fp32 between steps, where the kernel exchanges it through the fp16 output)."""
    _check_layer(torch.float16, True, [4, 3], True, tol=1e-2)


def test_inference_skips_saved_tensors():
    gates_x, h0, c0, w_hh, _ = _inputs(torch.float32, True)
    y, h_n, c_n, gates, cells = numba_lstm.forward(gates_x, h0, c0, w_hh, None, None, False, False)
    ref = reference.forward(gates_x, h0, c0, w_hh)
    assert gates is None and cells is None
    for name, a, b in zip(("y", "h_n", "c_n"), (y, h_n, c_n), ref):
        assert_close(a, b, TOL[torch.float32], what=name)


def test_block_slicing_with_a_partial_last_block(monkeypatch):
    """Three blocks of 3, 3 and 2 units. Only T = 1 is right in the simulator with several blocks
    (no step reads another block's h), which is enough to check each block's W_hh slice."""
    gates_x, h0, c0, w_hh, _ = _inputs(torch.float64, True)
    gates_x = gates_x[:1].contiguous()
    real_plan = numba_lstm.plan

    def three_blocks(kind, dtype, H, B, device_index=None):
        p = real_plan(kind, dtype, H, B, device_index)
        return numba_lstm.Plan(3, p.threads, 3, p.lanes, numba_lstm._shared_bytes(kind, dtype, H, B, 3))

    monkeypatch.setattr(numba_lstm, "plan", three_blocks)
    out = numba_lstm.forward(gates_x, h0, c0, w_hh, None, None, False, True)
    ref = reference.forward(gates_x, h0, c0, w_hh)
    for name, a, b in zip(("y", "h_n", "c_n", "gates", "cells"), out, ref):
        assert_close(a, b, TOL[torch.float64], what=name)


def test_unsupported_reasons():
    cpu = torch.device("cpu")
    ask = lambda **kw: numba_lstm.unsupported(**{**dict(device=cpu, dtype=torch.float32,  # noqa: E731
                                                        hidden_size=8, batch=2), **kw})
    assert ask() is None
    assert "bfloat16" in ask(dtype=torch.bfloat16)
    assert "NUMBA_ENABLE_CUDASIM" in ask(device=torch.device("cuda"))
    with pytest.raises(ValueError, match="bfloat16"):
        lstm_gpu.select_backend("numba", device="cpu", dtype=torch.bfloat16, hidden_size=8)


@pytest.mark.parametrize("proj", [0, 3], ids=["no-proj", "proj"])
def test_module_matches_torch_lstm_with_gradients(proj):
    """End to end: lstm_gpu.LSTM(backend="numba") vs torch.nn.LSTM, packed unsorted lengths and a
    bidirectional layer, every output and gradient; with a projection too (folded into W_hh)."""
    torch.manual_seed(0)
    I, Tm, Bm = 3, 4, 2
    ref = torch.nn.LSTM(I, H, bidirectional=True, proj_size=proj).double()
    ours = lstm_gpu.LSTM(I, H, bidirectional=True, proj_size=proj, backend="numba").double()
    ours.load_state_dict(ref.state_dict())
    assert ours.backend_for(torch.zeros(Tm, Bm, I, dtype=torch.float64)) == "numba"
    x = torch.randn(Tm, Bm, I, dtype=torch.float64)
    hx = (torch.randn(2, Bm, proj or H, dtype=torch.float64), torch.randn(2, Bm, H, dtype=torch.float64))
    lengths = torch.tensor([2, 4])
    rnn = torch.nn.utils.rnn

    def run(module):
        xs = x.clone().requires_grad_()
        hs = tuple(h.clone().requires_grad_() for h in hx)
        y, (h, c) = module(rnn.pack_padded_sequence(xs, lengths, enforce_sorted=False), hs)
        y, _ = rnn.pad_packed_sequence(y, total_length=Tm)
        (y.square().sum() + h.sum() + 2 * c.sum()).backward()
        return [y, h, c], [xs.grad, *(t.grad for t in hs)] + [p.grad for p in module.parameters()]

    (out_r, grad_r), (out_o, grad_o) = run(ref), run(ours)
    for i, (a, b) in enumerate(zip(out_o, out_r)):
        assert_close(a, b, 1e-12, what=f"output {i}")
    for i, (a, b) in enumerate(zip(grad_o, grad_r)):
        assert_close(a, b, 1e-12, what=f"gradient {i}")


# ---------------------------------------------------------------------------------------------------
# The GPU configuration, checked without a GPU
# ---------------------------------------------------------------------------------------------------
H100_SMS, H100_SMEM_OPTIN, H100_SMEM_PER_SM = 132, 227 * 1024, 228 * 1024


def _h100_co_resident(regs_per_thread=112):
    """A model of max_cooperative_grid_blocks on an H100 SXM (not the driver's answer): blocks per SM
    limited by shared memory (1 KB reserved per block), registers (64 K) and threads (2048)."""
    def co_resident(shared):
        per_sm = min(H100_SMEM_PER_SM // (shared + 1024), 65536 // (regs_per_thread * numba_lstm.THREADS),
                     2048 // numba_lstm.THREADS)
        return per_sm * H100_SMS
    return co_resident


@pytest.mark.parametrize("dtype,H,fits", [
    (torch.float32, 256, True), (torch.float32, 1024, True), (torch.float32, 1280, True),
    (torch.float32, 2048, False), (torch.float16, 1024, True), (torch.float16, 2048, False),
    (torch.float64, 512, True), (torch.float64, 1024, False)], ids=str)
def test_grid_rule_on_an_h100_model(dtype, H, fits):
    for kind in ("fwd", "bwd"):
        for batch in (1, 8, 64):
            p = numba_lstm.choose_grid(kind, dtype, H, batch, sms=H100_SMS, smem_limit=H100_SMEM_OPTIN,
                                       static_smem=0, co_resident=_h100_co_resident())
            if not fits:
                assert isinstance(p, str) and f"limit of {H100_SMEM_OPTIN} bytes" in p, p
                continue
            assert isinstance(p, numba_lstm.Plan), p
            assert 1 < p.blocks <= H100_SMS and p.blocks * p.ht >= H > (p.blocks - 1) * p.ht
            assert p.shared <= H100_SMEM_OPTIN and p.lanes == 32
            assert p.blocks <= _h100_co_resident()(p.shared)


_COMPILE_FOR_SM90 = r"""
import json, os, subprocess, sys
os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
import numpy
numpy.__dict__.pop("row_stack", None)     # as numpy >= 2.5 (the GPU machine's): numba_kernels must restore it
import torch
import numba.cuda.dispatcher as dispatcher
class _SM90:                       # cooperative groups' device functions ask for the current device
    compute_capability = (9, 0)
dispatcher.get_current_device = lambda: _SM90()
from numba import cuda
from lstm_gpu.kernels import numba_lstm
out = {}
for dtype in (torch.float16, torch.float32, torch.float64):
    fwd, bwd = numba_lstm.kernels_for(dtype)
    for kind, kernel in (("fwd", fwd), ("bwd", bwd)):
        ptx, _ = cuda.compile_ptx(kernel.py_func, numba_lstm.signature(kind, dtype), cc=(9, 0))
        path = os.path.join(sys.argv[2], f"{kind}_{dtype}.ptx".replace("torch.", ""))
        open(path, "w").write(ptx)
        r = subprocess.run([sys.argv[1], "-arch=sm_90", "-c", "-v", path, "-o", path + ".o"],
                           capture_output=True, text=True)
        out[f"{kind} {dtype}"] = [r.returncode, r.stderr, "shfl.sync.down" in ptx]
print(json.dumps(out))
"""


@pytest.mark.slow     # NVRTC + ptxas for sm_90: ~10 s on 2 cores
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """Real Numba-CUDA typing and NVVM, then ptxas for sm_90: registers and spills of every kernel.

    Needs libnvrtc (pip package nvidia-cuda-nvrtc; its lib folder in LSTM_GPU_NVRTC_LIB or on the
    loader path) and ptxas (a CUDA toolkit); skipped otherwise. The counts are before linking
    cudadevrt (grid.sync), so the GPU test reads the linked kernel's own numbers too.
    """
    import glob
    import json
    import os
    import re
    import shutil
    import subprocess
    import sys
    ptxas = shutil.which("ptxas") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/ptxas"))), None)
    if ptxas is None:
        pytest.skip("no ptxas (CUDA toolkit) on this machine")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if os.environ.get("LSTM_GPU_NVRTC_LIB"):
        env["LD_LIBRARY_PATH"] = os.environ["LSTM_GPU_NVRTC_LIB"] + ":" + env.get("LD_LIBRARY_PATH", "")
    r = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90, ptxas, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode and ("nvrtc" in r.stderr or "cannot be found" in r.stderr):
        pytest.skip("libnvrtc not found: pip install nvidia-cuda-nvrtc and set LSTM_GPU_NVRTC_LIB")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (code, log, has_shuffle) in results.items():
        assert code == 0, f"{name}: ptxas failed\n{log}"
        regs = int(re.search(r"Used (\d+) registers", log).group(1))
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, f"{name}: {log}"
        assert regs * numba_lstm.THREADS <= 65536, f"{name}: {regs} registers x {numba_lstm.THREADS} threads"
        assert has_shuffle, f"{name}: no warp shuffle in the PTX"
        print(name, f"{regs} registers, no spills")
