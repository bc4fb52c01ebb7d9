"""The kernels' many-program path on CPU: every program of the grid at once (lstm_gpu.testing.concurrent_programs).

Under ``concurrent_programs(n)`` the Triton interpreter and the Numba simulator run the grid a GPU with n
SMs would get, one thread per program, so the exchange of h (forward) and dz (backward) between programs
through global memory, the grid barrier, the masked tile at the edge of H and several batch tiles per
program all run. Checked: forward (y, h_n, c_n, gates, cells) and every gradient (dgates, dh0, dc0)
against lstm_gpu.reference, and end to end lstm_gpu.LSTM against torch.nn.LSTM, for n in {2, 3, 4, 8},
both matmul paths, unsorted lengths, reverse, bidirectional with two layers; outputs start NaN-filled
(conftest.py). Mutations of the barrier (no wait, count off by one) must be caught within seconds:
wrong values, or a deadlock reported at the deadline.

Not tested here (the harness's stated limit): cache modifiers, memory orderings and fences; the threads see
memory sequentially consistent. The sm_90 code checks and the GPU tests cover those.
"""
import contextlib
import dataclasses
import inspect
import threading
import time
from unittest import mock

import pytest
import torch

from lstm_gpu import reference, testing
from lstm_gpu.kernels import host
from lstm_gpu.testing import ProgramsHung, concurrent_programs
from helpers import assert_close, packed_bidirectional_vs_torch

TRITON_SKIP = testing.unavailable_reason("triton")
NUMBA_SKIP = testing.unavailable_reason("numba")
needs_triton = pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
needs_numba = pytest.mark.skipif(NUMBA_SKIP is not None, reason=str(NUMBA_SKIP))

if TRITON_SKIP is None:
    import triton
    import triton.language as tl
    from triton.runtime import interpreter
    from lstm_gpu.kernels import triton_config, triton_lstm
if NUMBA_SKIP is None:
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi
    from lstm_gpu.kernels import numba_lstm

# (outputs, gradients) tolerance vs the float64 reference, by dtype
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-6, 5e-6), torch.float16: (4e-3, 1e-2)}
MUTATION_DEADLINE = 4.0         # seconds: a mutated barrier must be caught well within this


# ----------------------------------------------------------------------------------------------------
# Shapes: H with exactly n programs and a masked edge tile
# ----------------------------------------------------------------------------------------------------

def triton_h(n, B, dtype, start=2, k_split=1):
    """The smallest H ≥ start for which the triton grid under concurrent_programs(n) is n programs with
    the last tile partly masked (H not a multiple of HT) and the reduction in at least ``k_split`` chunks.
    Today (HT ≥ 4 broadcast, ≥ 16 tl.dot): broadcast n = 2, 3, 4, 8 → H = 5, 9, 13, 29; tl.dot → 17, 33,
    49, 113 (33 and 49: K as 32 + a 16 tail); fp16 in two K chunks, n = 3 → H = 129 (K as 128 + a 32 tail,
    each in two chunks of 64 and 16)."""
    for H in range(start, 1025):
        cfg = triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n)
        chunks = triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n, backward=True).k_split   # the forward
        if cfg.num_programs == n and H % cfg.ht and chunks >= k_split:                  # may fuse its K pieces
            return H
    raise AssertionError(f"no H ≤ 1024 gives {n} triton programs with a masked edge tile for B={B}, {dtype}"
                         f"{f', K in {k_split} chunks' if k_split > 1 else ''}")


def numba_h(n, start=2):
    """The smallest H ≥ start with n numba blocks and a last block owning fewer units (HT = cdiv(H, n); today
    n = 2, 3, 4, 8 → H = 3, 5, 7, 15)."""
    for H in range(max(start, n), 1025):
        ht = -(-H // n)
        if testing.numba_blocks(n, H=H) == n and H % ht:
            return H
    raise AssertionError(f"no H gives {n} numba blocks with a partial last block")


def make_inputs(T, B, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return dict(gx=r(T, B, 4 * H), h0=r(B, H), c0=r(B, H), w=r(4 * H, H, scale=H ** -0.5),
                dy=r(T, B, H), dhn=r(B, H), dcn=r(B, H))


def lengths_for(T, B):
    """Unsorted lengths from T down to 1, the longest not first (e.g. T=5, B=3: [3, 5, 1])."""
    lens = [max(1, T - (2 * i + 2) % (T + 1)) for i in range(B)]
    lens[min(1, B - 1)] = T
    return torch.tensor(lens)


def _backend(backend):
    return triton_lstm if backend == "triton" else numba_lstm


def run_forward(backend, d, lengths, reverse):
    return _backend(backend).forward(d["gx"], d["h0"], d["c0"], d["w"], None, lengths, reverse, True)


def run_backward(backend, d, out, lengths, reverse):
    y, hn, cn, gates, cells = out
    return _backend(backend).backward(d["dy"], d["dhn"], d["dcn"], gates, cells, d["h0"], d["c0"], y, d["w"],
                                      None, lengths, reverse)[:3]


def run_layer(backend, inp, lengths, reverse):
    """Forward and backward of one layer through the backend's entry points (reference.py's contract)."""
    out = run_forward(backend, inp, lengths, reverse)
    return out, run_backward(backend, inp, out, lengths, reverse)


def reference_layer(inp, lengths, reverse):
    d = {k: v.double() for k, v in inp.items()}
    ref = reference.forward(d["gx"], d["h0"], d["c0"], d["w"], None, lengths, reverse, True)
    grads = reference.backward(d["dy"], d["dhn"], d["dcn"], ref[3], ref[4], d["h0"], d["c0"], ref[0], d["w"], None,
                               lengths, reverse)[:3]
    return ref, grads


NAMES = ["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"]


def check_layer(backend, n, T, B, H, dtype, lengths, reverse, hold=None):
    inp = make_inputs(T, B, H, dtype)
    with concurrent_programs(n, hold=hold):
        out, grads = run_layer(backend, inp, lengths, reverse)
    ref, ref_grads = reference_layer(inp, lengths, reverse)
    tol, gtol = TOL[dtype]
    for name, got, want, t in zip(NAMES, out + tuple(grads), ref + tuple(ref_grads), [tol] * 5 + [gtol] * 3):
        assert not torch.isnan(got).any(), f"{name}: NaN (an element no program wrote, or read before written)"
        assert_close(got, want, t, what=f"{backend} n={n} {name}")


# ----------------------------------------------------------------------------------------------------
# Triton: one layer, every output and gradient vs the reference
# ----------------------------------------------------------------------------------------------------

# (n, dtype, tl.dot?, B, reverse, K chunks ≥). Broadcast path: BLOCK_B = 2 at these sizes, so B = 2 is one
# batch tile (c kept in registers, the usual GPU case) and B = 3, 5 are several (c in a scratch slice);
# tl.dot: BLOCK_B = 16 (B ≤ 16 one tile, 17 two).
TRITON_CASES = [
    (4, torch.float16, True, 20, True, 1),      # 2 units x 2 batch groups (rows 0-15, 16-19)
    (4, torch.float64, False, 5, False, 1),     # 2 units x 2 batch groups of 2-row tiles
    (2, torch.float64, False, 2, False, 1),
    (3, torch.float32, False, 3, True, 1),
    (4, torch.float16, True, 17, False, 1),
    (8, torch.float64, False, 3, True, 1),
    (3, torch.float16, True, 3, True, 2),
]
TRITON_SLOW = [
    (2, torch.float16, True, 17, True, 1),
    (2, torch.float64, False, 3, False, 1),
    (3, torch.float64, False, 5, False, 1),
    (3, torch.float32, True, 17, True, 1),
    (4, torch.float32, True, 2, False, 2),
    (4, torch.float32, False, 2, True, 1),
    (8, torch.float16, True, 9, False, 1),
    (3, torch.float16, True, 5, False, 2),      # K as 128 + a 32 tail, two chunks each, the tail mostly masked
    (8, torch.float32, False, 3, False, 1),
]


def _triton_case(n, dtype, dot, B, reverse, k_split, monkeypatch, T=4):
    if dtype == torch.float32:          # fp32 takes tl.dot only with tensor-core precision (the interpreter
        monkeypatch.setattr(triton_config, "FP32_PRECISION", "tf32" if dot else "ieee")   # computes it exactly)
    H = triton_h(n, B, dtype, k_split=k_split)
    cfg = triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n)
    assert (cfg.num_programs, cfg.use_dot) == (n, dot) and H % cfg.ht, cfg
    check_layer("triton", n, T, B, H, dtype, lengths_for(T, B), reverse)


@needs_triton
@pytest.mark.parametrize("n,dtype,dot,B,reverse,k_split", TRITON_CASES, ids=str)
def test_triton_layer(n, dtype, dot, B, reverse, k_split, monkeypatch):
    _triton_case(n, dtype, dot, B, reverse, k_split, monkeypatch)


@needs_triton
@pytest.mark.parametrize("n,B,reverse", [(3, 16, True), (2, 9, False), pytest.param(4, 32, False, marks=pytest.mark.slow)],
                         ids=str)
def test_triton_layer_fp32_ieee_fma(n, B, reverse, monkeypatch):
    """fp32-ieee: tl.dot in IEEE fp32 (FMAs on CUDA cores, the reduction inside each thread) in 16-row tiles, HT =
    4, forward and backward where B is a multiple of 16 (B = 16: one tile; 32: two), the forward alone for a tile
    of 9 rows (the backward then on the broadcast path); every output and gradient vs the reference at fp32
    tolerance."""
    monkeypatch.setattr(triton_config, "FP32_PRECISION", "ieee")
    H = triton_h(n, B, torch.float32)
    for backward in (False, True):
        cfg = triton_config.gpu_config(B=B, H=H, dtype=torch.float32, n_sm=n, backward=backward)
        fma = not backward or B % 16 == 0
        assert cfg.use_dot == fma and cfg.num_programs == n, cfg
        if fma:
            assert (cfg.precision, cfg.ht, cfg.block_b, cfg.k_split) == ("ieee", 4, 16, 1), cfg
    check_layer("triton", n, 4, B, H, torch.float32, lengths_for(4, B), reverse)


@needs_triton
@pytest.mark.parametrize("B,reverse", [(3, True), (20, False)], ids=str)
def test_triton_layer_tf32_eight_units(B, reverse, monkeypatch):
    """tf32 where 16 units' fp32 weights do not fit on chip (on an H100, H 769-1024): 8 units a program, the
    four gates fused in one [BB, 32] dot per piece of K; the backward on the broadcast path. Scaled down: the
    shared-memory budget cut so that at H = 37 on 5 SMs 16 units do not fit and 8 do (5 programs, the last
    with 5 units; B = 3 one tile, B = 20 two). Every output and gradient vs the reference."""
    monkeypatch.setattr(triton_config, "FP32_PRECISION", "tf32")
    monkeypatch.setattr(triton_config, "DOT_SHARED_BUDGET", 12_000)   # 16 units: 14336 bytes; 8 fused: 9216
    n, H = 5, 37
    fwd = triton_config.gpu_config(B=B, H=H, dtype=torch.float32, n_sm=n)
    bwd = triton_config.gpu_config(B=B, H=H, dtype=torch.float32, n_sm=n, backward=True)
    assert (fwd.ht, fwd.pieces, fwd.use_dot, fwd.num_programs, fwd.num_warps) == (8, 3, True, n, 4), fwd
    assert (bwd.ht, bwd.use_dot, bwd.num_programs) == (8, False, n), bwd
    check_layer("triton", n, 4, B, H, torch.float32, lengths_for(4, B), reverse)


@needs_triton
@pytest.mark.parametrize("n,B,reverse,tiles", [(4, 64, True, 1), pytest.param(2, 64, False, 2, marks=pytest.mark.slow)],
                         ids=str)
def test_triton_layer_32_row_tiles(n, B, reverse, tiles, monkeypatch):
    """The forward's 32-row tiles (16-bit, a batch group of 32 rows or more): one per program (2 units x 2
    groups of 32 rows) or two (one group of 64 rows); the backward keeps 16-row tiles. Every output and
    gradient vs the reference."""
    H = triton_h(n, B, torch.float16, start=17)                    # two unit programs
    fwd = triton_config.gpu_config(B=B, H=H, dtype=torch.float16, n_sm=n)
    bwd = triton_config.gpu_config(B=B, H=H, dtype=torch.float16, n_sm=n, backward=True)
    assert (fwd.block_b, fwd.rows_per_group(B) // fwd.block_b, bwd.block_b) == (32, tiles, 16), (fwd, bwd)
    assert fwd.num_programs == bwd.num_programs == n
    check_layer("triton", n, 4, B, H, torch.float16, lengths_for(4, B), reverse)


def _with_polled_h(monkeypatch):
    """Make the configs the harness hands out exchange h polled (``polled_h``)."""
    real = triton_config.gpu_config

    def gpu_config(**kwargs):
        return dataclasses.replace(real(**kwargs), polled_h=True)
    monkeypatch.setattr(triton_config, "gpu_config", gpu_config)


@needs_triton
@pytest.mark.parametrize("n,dtype,dot,B,reverse,k_split", [
    (4, torch.float16, True, 20, True, 1),      # 2 units x 2 batch groups, the second partial
    (3, torch.float16, True, 3, False, 2),      # K in two chunks
    pytest.param(4, torch.float16, True, 17, False, 1, marks=pytest.mark.slow),   # the second group one row
    pytest.param(8, torch.float16, True, 9, True, 1, marks=pytest.mark.slow),
], ids=str)
def test_triton_layer_polled_exchange(n, dtype, dot, B, reverse, k_split, monkeypatch):
    """The forward with h exchanged polled (write-once slots, no step counter; one tile per program, as the
    launcher uses it): every output and gradient."""
    _with_polled_h(monkeypatch)
    _triton_case(n, dtype, dot, B, reverse, k_split, monkeypatch)


@needs_triton
@pytest.mark.parametrize("n,dtype,dot,B,reverse,k_split", [
    (3, torch.float16, True, 3, True, 1),       # one tile, where the configs poll the exchange
    pytest.param(4, torch.float16, True, 20, False, 1, marks=pytest.mark.slow),   # 2 batch groups of one tile
], ids=str)
def test_triton_layer_counter_exchange(n, dtype, dot, B, reverse, k_split, monkeypatch):
    """The same one-tile 16-bit forward with h exchanged through the step counter (``POLLED_H`` off, what the
    GPU session's "triton-counter" column runs): every output and gradient."""
    monkeypatch.setattr(triton_config, "POLLED_H", False)
    H = triton_h(n, B, dtype, k_split=k_split)
    assert not triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n).polled_h
    _triton_case(n, dtype, dot, B, reverse, k_split, monkeypatch)


@needs_triton
def test_triton_layer_with_a_program_held_back():
    """Each program in turn held back 0.2 s at its first synchronisation, the others running on (2 units x 2
    batch groups, each group its own counter): every output and gradient as the reference's."""
    n, B, dtype = 4, 20, torch.float16
    H = triton_h(n, B, dtype)
    for program in range(n):
        check_layer("triton", n, 4, B, H, dtype, lengths_for(4, B), False, hold=(program, 1, 0.2))


@needs_triton
def test_first_cases_split_the_batch_in_groups():
    """The first two cases above run 2 units x 2 batch groups (each group its own step counter)."""
    for n, dtype, dot, B, _, k_split in TRITON_CASES[:2]:
        cfg = triton_config.gpu_config(B=B, H=triton_h(n, B, dtype, k_split=k_split), dtype=dtype, n_sm=n)
        assert (cfg.batch_groups, cfg.num_programs) == (2, 4), cfg


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("n,dtype,dot,B,reverse,k_split", TRITON_SLOW, ids=str)
def test_triton_layer_more(n, dtype, dot, B, reverse, k_split, monkeypatch):
    _triton_case(n, dtype, dot, B, reverse, k_split, monkeypatch, T=5)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("B,H,polled", [(16, 768, True), (1, 256, False)], ids=["B16-H768-polled", "B1-H256-counter"])
def test_triton_headline_forward_as_configured_for_an_h100(B, H, polled):
    """The headline forwards with the very config a 132-SM GPU gets (gpu_config: K folded into M, 8 warps, HT = 16;
    B16 H768: 48 programs, h polled, K/2 in three pieces; B1 H256: 16 programs, the step counter), all programs
    at once: every output vs the reference from the same fp16 inputs, lengths mixed."""
    from lstm_gpu.kernels import triton_config, triton_lstm
    cfg = triton_config.gpu_config(B=B, H=H, dtype=torch.float16, n_sm=132)
    assert cfg.fold == 2 and cfg.polled_exchange(torch.float16) == polled and cfg.num_programs == H // 16, cfg
    T = 3
    g = torch.Generator().manual_seed(H)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).half()  # noqa: E731
    gx, h0, c0, w = r(T, B, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H ** -0.5)
    lens = torch.tensor(([T, 2, 1] * B)[:B]) if B > 1 else None
    with testing.concurrent_programs(cfg.num_programs, backends=("triton",), deadline=300):
        out = triton_lstm.lstm_fwd(gx, h0, c0, w, lens, False, True, config=cfg)
    ref = reference.forward(gx.double(), h0.double(), c0.double(), w.double(), None, lens, False, True)
    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        err = (a.double() - b.double()).abs().max().item()
        assert err <= TOL[torch.float16][0], f"{name}: {err:.3g}"


# ----------------------------------------------------------------------------------------------------
# Numba: one layer, every output and gradient vs the reference
# ----------------------------------------------------------------------------------------------------

NUMBA_CASES = [(2, torch.float64, False), (3, torch.float32, True), (4, torch.float64, True)]
NUMBA_SLOW = [(8, torch.float64, False), (3, torch.float16, False), (2, torch.float32, True)]


def _numba_case(n, dtype, reverse, T=4, B=2):
    H = numba_h(n)
    assert testing.numba_blocks(n, H=H, B=B, dtype=dtype) == n
    check_layer("numba", n, T, B, H, dtype, lengths_for(T, B), reverse)


@needs_numba
@pytest.mark.parametrize("n,dtype,reverse", NUMBA_CASES, ids=str)
def test_numba_layer(n, dtype, reverse):
    _numba_case(n, dtype, reverse)


@needs_numba
@pytest.mark.slow
@pytest.mark.parametrize("n,dtype,reverse", NUMBA_SLOW, ids=str)
def test_numba_layer_more(n, dtype, reverse):
    _numba_case(n, dtype, reverse, B=3)


@needs_numba
@pytest.mark.slow
def test_numba_shuffle_tree_with_many_blocks(monkeypatch):
    """Several threads per dot product (the emulated shuffle tree) in every block at once."""
    monkeypatch.setattr(numba_lstm, "SIM_LANES", 8)
    _numba_case(3, torch.float32, True)


# ----------------------------------------------------------------------------------------------------
# End to end: lstm_gpu.LSTM vs torch.nn.LSTM, 2 layers, bidirectional, packed unsorted lengths
# ----------------------------------------------------------------------------------------------------

def _module_vs_torch(backend, n, H, dtype):
    packed_bidirectional_vs_torch(backend, T=4, B=3, I=3, H=H, lengths=torch.tensor([3, 4, 1]), dtype=dtype,
                                  tol=1e-10 if dtype == torch.float64 else 2e-5,
                                  context=lambda: concurrent_programs(n))


@needs_triton
@pytest.mark.parametrize("n,dtype", [(3, torch.float64), pytest.param(2, torch.float32, marks=pytest.mark.slow),
                                     pytest.param(8, torch.float64, marks=pytest.mark.slow)], ids=str)
def test_triton_module_vs_torch_lstm(n, dtype):
    _module_vs_torch("triton", n, triton_h(n, 3, dtype), dtype)


@needs_numba
@pytest.mark.parametrize("n,dtype", [(2, torch.float64), pytest.param(4, torch.float32, marks=pytest.mark.slow)],
                         ids=str)
def test_numba_module_vs_torch_lstm(n, dtype):
    _module_vs_torch("numba", n, numba_h(n), dtype)


# ----------------------------------------------------------------------------------------------------
# Mutations: a broken barrier must be caught (wrong values or a reported deadlock), within seconds
# ----------------------------------------------------------------------------------------------------

def _outcome(backend, n, H, dtype, mutation, phase, B=3, T=4, tol=1e-9, hold=None):
    """What the forward ("fwd") or the backward ("bwd", after a correct forward) gives with the mutated
    barrier: "hung", "error: ...", "wrong: ..." (off the reference by more than ``tol``) or "right".
    ``hold``: as ``concurrent_programs``'s, for the mutated launch only."""
    inp = make_inputs(T, B, H, dtype)
    lengths = lengths_for(T, B)
    ref, ref_grads = reference_layer(inp, lengths, False)
    if phase == "bwd":
        with concurrent_programs(n):
            out = run_forward(backend, inp, lengths, False)
        names, wants = NAMES[5:], ref_grads
    else:
        names, wants = NAMES[:5], ref
    start = time.monotonic()
    try:
        with concurrent_programs(n, deadline=MUTATION_DEADLINE, hold=hold), mutation:
            if phase == "bwd":
                got = run_backward(backend, inp, out, lengths, False)
            else:
                got = run_forward(backend, inp, lengths, False)
    except ProgramsHung as e:
        verdict = "hung"
        assert e.waiting, "a deadline error names the programs still waiting"
    except Exception as e:          # noqa: BLE001
        verdict = f"error: {e!r}"
    else:
        wrong = [name for name, g, want in zip(names, got, wants)
                 if not (g.double() - want).abs().max().item() <= tol]    # NaN counts as wrong
        verdict = f"wrong: {', '.join(wrong)}" if wrong else "right"
    elapsed = time.monotonic() - start
    assert elapsed < 2 * MUTATION_DEADLINE + 10, f"the mutation took {elapsed:.0f} s to show"
    return verdict


def _triton_barrier_mutation(kind):
    """A replacement for triton_lstm.step_barrier, whatever its signature: skipped entirely (no wait), or
    the real barrier told one program more / fewer (NUM_PROGRAMS ± 1). The interpreter looks the name up
    in the kernel module's globals at every call, so patching the module attribute reaches the kernels."""
    real = triton_lstm.step_barrier
    if kind == "no_wait":
        def step_barrier(*args, **kwargs):
            return None
    else:
        delta = {"count+1": 1, "count-1": -1}[kind]
        sig = inspect.signature(real.fn)
        assert "NUM_PROGRAMS" in sig.parameters, f"step_barrier{sig} has no NUM_PROGRAMS"

        def step_barrier(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.arguments["NUM_PROGRAMS"] += delta
            return real(*bound.args, **bound.kwargs)
    return mock.patch.object(triton_lstm, "step_barrier", step_barrier)


@needs_triton
@pytest.mark.parametrize("phase", ["fwd", "bwd"])
@pytest.mark.parametrize("kind", ["no_wait", "count+1", "count-1"])
def test_triton_broken_barrier_is_caught(kind, phase):
    n = 3
    verdict = _outcome("triton", n, triton_h(n, 3, torch.float64), torch.float64, _triton_barrier_mutation(kind), phase)
    assert verdict != "right", f"a barrier mutated ({kind}, {phase}) went unnoticed"
    if kind == "count+1":
        assert verdict == "hung", verdict


def _polled_exchange_mutation(kind):
    """A replacement for triton_lstm._late, the test that decides whether a reader still waits for h on the
    polled path: never (no wait: UNWRITTEN elements are used as h), or always (never done: a deadlock)."""
    @triton.jit
    def no_wait(w):
        return tl.min(w) > 32767                    # int16: never

    @triton.jit
    def never_done(w):
        return tl.min(w) <= 32767                   # always
    return mock.patch.object(triton_lstm, "_late", {"no_wait": no_wait, "never_done": never_done}[kind])


@needs_triton
@pytest.mark.parametrize("phase", ["fwd", "bwd"])
@pytest.mark.parametrize("kind", ["no_wait", "never_done"])
def test_triton_broken_polled_exchange_is_caught(kind, phase, monkeypatch):
    """fp16 on tensor cores exchanges h (forward) and dz (backward) in write-once slots the readers poll, with
    no step counter: a reader that does not wait reads elements not yet written (UNWRITTEN: -0.0); one that
    never accepts them hangs. The last program is held back 1 s at its first read of h, so the readers that do not wait
    read its words before it writes them, every time: staggered starts alone left this to the thread
    scheduler, and a loaded CI machine once ran the broken reader in an order that happened to be right."""
    _with_polled_h(monkeypatch)
    n, dtype = 3, torch.float16
    H = triton_h(n, 3, dtype)
    assert triton_config.gpu_config(B=3, H=H, dtype=dtype, n_sm=n).use_dot
    tol = TOL[dtype][0]
    hold = (n - 1, 1, 1.0) if kind == "no_wait" else None
    if phase == "bwd":
        assert triton_config.gpu_config(B=3, H=H, dtype=dtype, n_sm=n, backward=True).polled_backward(dtype)
        tol = TOL[dtype][1]
    assert _outcome("triton", n, H, dtype, contextlib.nullcontext(), phase, tol=tol, hold=hold) == "right"
    verdict = _outcome("triton", n, H, dtype, _polled_exchange_mutation(kind), phase, tol=tol, hold=hold)
    if kind == "never_done":
        assert verdict == "hung", verdict
    else:
        assert verdict.startswith("wrong: ") if phase == "bwd" else verdict == "wrong: y, h_n, c_n, gates, cells", verdict


def _numba_sync_mutation(kind, n):
    """grid.sync() in the simulator: not waiting at all, or the last block never arriving (the others wait
    for it: a barrier whose count is one block too many for the blocks that come)."""
    if kind == "no_wait":
        def sync(self):
            return None
    else:
        harness_sync = kernelapi.GridGroup.sync      # read inside concurrent_programs: the grid barrier

        def sync(self):
            if threading.current_thread().blockIdx.x == n - 1:
                return None
            return harness_sync(self)
    return mock.patch.object(kernelapi.GridGroup, "sync", sync)


class _Late:
    """A mutation built once the harness is active (it wraps the harness's grid.sync)."""

    def __init__(self, build):
        self.build, self.patch = build, None

    def __enter__(self):
        self.patch = self.build()
        return self.patch.__enter__()

    def __exit__(self, *exc):
        return self.patch.__exit__(*exc)


@needs_numba
@pytest.mark.parametrize("phase", ["fwd", "bwd"])
@pytest.mark.parametrize("kind", ["no_wait", "last_block_missing"])
def test_numba_broken_grid_sync_is_caught(kind, phase):
    n = 3
    verdict = _outcome("numba", n, numba_h(n), torch.float64, _Late(lambda: _numba_sync_mutation(kind, n)), phase,
                       B=2)
    assert verdict != "right", f"a grid.sync mutated ({kind}, {phase}) went unnoticed"
    if kind == "last_block_missing":
        assert verdict == "hung", verdict


# ----------------------------------------------------------------------------------------------------
# The harness itself
# ----------------------------------------------------------------------------------------------------

@needs_triton
def test_interpreter_atomics_and_program_ids_under_threads():
    """The premises: the interpreter's atomic_add stays exact with 8 programs adding at once, and each
    thread sees its own program id."""
    import triton
    import triton.language as tl

    @triton.jit
    def count(p_total, p_mine, N):
        i_p = tl.program_id(0)
        for _ in range(N):
            tl.atomic_add(p_total, 1, sem="relaxed")
            tl.atomic_add(p_mine + i_p, 1, sem="relaxed")

    total, mine = torch.zeros(1, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)
    with concurrent_programs(8, backends=("triton",)):
        count[(8,)](total, mine, 1000)
    assert total.item() == 8 * 1000 and mine.tolist() == [1000] * 8


@needs_triton
def test_hold_stops_one_program_at_its_kth_synchronisation():
    """``hold=(1, 1, 0.3)``: program 1 stops at its first atomic after letting program 2 start, so the tickets of
    one shared counter go 0 (program 0), 1 (program 2), 2 (program 1); a hold that names no program is refused."""
    import triton
    import triton.language as tl

    @triton.jit
    def ticket(p_next, p_ticket):
        i_p = tl.program_id(0)
        tl.store(p_ticket + i_p, tl.atomic_add(p_next, 1, sem="relaxed"))

    counter, tickets = torch.zeros(1, dtype=torch.int32), torch.full((3,), -1, dtype=torch.int32)
    with concurrent_programs(3, hold=(1, 1, 0.3), backends=("triton",)):
        ticket[(3,)](counter, tickets)
    assert tickets.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="hold"):
        with concurrent_programs(3, hold=(3, 1, 0.1), backends=("triton",)):
            pass


@needs_triton
def test_deadlock_names_the_waiting_programs():
    n = 3
    H = triton_h(n, 3, torch.float64)
    inp = make_inputs(3, 3, H, torch.float64)
    with pytest.raises(ProgramsHung) as info:
        with concurrent_programs(n, deadline=2.0), _triton_barrier_mutation("count+1"):
            triton_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)
    assert info.value.waiting == [0, 1, 2]
    assert all("barrier" in where for where in info.value.where.values()), info.value.where
    assert "3 of 3 programs still running" in str(info.value)


@needs_triton
def test_a_failing_program_stops_the_others():
    """Program 1 raises at its first barrier while 0 and 2 wait there for it: the launch raises that error
    at once (not at the deadline), and no program thread is left running."""
    n = 3
    H = triton_h(n, 3, torch.float64)
    inp = make_inputs(3, 3, H, torch.float64)
    real = triton_lstm.step_barrier

    def step_barrier(*args, **kwargs):
        if interpreter.interpreter_builder.grid_idx[0] == 1:
            raise ZeroDivisionError("program 1 fails")
        return real(*args, **kwargs)

    start = time.monotonic()
    with pytest.raises(interpreter.InterpreterError, match=r"program \(1, 0, 0\).*program 1 fails"):
        with concurrent_programs(n, deadline=60), mock.patch.object(triton_lstm, "step_barrier", step_barrier):
            triton_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)
    assert time.monotonic() - start < 30
    assert not [t for t in threading.enumerate() if t.name.startswith("triton program")]


@needs_numba
def test_a_failing_block_stops_the_others():
    n = 3
    H = numba_h(n)
    inp = make_inputs(3, 2, H, torch.float64)
    start = time.monotonic()
    with pytest.raises(ZeroDivisionError, match=r"block \(1, 0, 0\).*block 1 fails"):
        with concurrent_programs(n, deadline=60):
            harness_sync = kernelapi.GridGroup.sync

            def sync(self):
                if threading.current_thread().blockIdx.x == 1:
                    raise ZeroDivisionError("block 1 fails")
                return harness_sync(self)
            with mock.patch.object(kernelapi.GridGroup, "sync", sync):
                numba_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)
    assert time.monotonic() - start < 30
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if isinstance(t, sim_kernel.BlockThread)]


@needs_triton
@needs_numba
def test_everything_is_restored_and_one_program_mode_works_again():
    patched = [(interpreter.GridExecutor, "__call__"), (interpreter.InterpreterBuilder, "grid_idx"),
               (interpreter.InterpreterBuilder, "create_masked_load"), (triton_lstm, "choose_config"),
               (numba_lstm, "plan"), (sim_kernel, "BlockManager"), (kernelapi.GridGroup, "sync"),
               (kernelapi.FakeCUDAShared, "array")]
    before = [vars(obj).get(name, "absent") for obj, name in patched]
    with concurrent_programs(2):
        assert [vars(obj).get(name, "absent") for obj, name in patched] != before
    assert [vars(obj).get(name, "absent") for obj, name in patched] == before
    inp = make_inputs(3, 2, 6, torch.float64)
    ref = reference_layer(inp, None, False)
    for backend in ("triton", "numba"):
        out, grads = run_layer(backend, inp, None, False)
        for name, got, want in zip(NAMES, out + tuple(grads), ref[0] + tuple(ref[1])):
            assert_close(got, want, 1e-12, what=f"{backend} after the harness: {name}")


@needs_triton
@needs_numba
def test_without_the_stagger_all_programs_start_at_once():
    """stagger=False: every program starts at once (the results are the same: the barrier absorbs it)."""
    for backend, H in (("triton", triton_h(3, 2, torch.float64)), ("numba", numba_h(3))):
        inp = make_inputs(3, 2, H, torch.float64)
        with concurrent_programs(3, stagger=False):
            out, grads = run_layer(backend, inp, None, False)
        ref = reference_layer(inp, None, False)
        for name, got, want in zip(NAMES, out + tuple(grads), ref[0] + tuple(ref[1])):
            assert_close(got, want, 1e-12, what=f"{backend}: {name}")


@needs_triton
@needs_numba
def test_a_grid_that_is_not_n_programs_is_refused():
    inp = make_inputs(2, 2, 8, torch.float64)       # H = 8, n = 3: triton HT = 4 → 2 programs; numba HT 3 → 3
    with concurrent_programs(3), pytest.raises(ValueError, match="2 programs.*not 3"):
        triton_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)
    assert testing.numba_blocks(4, H=9) == 3
    inp = make_inputs(2, 2, 9, torch.float64)
    with concurrent_programs(4), pytest.raises(ValueError, match="3 blocks.*not 4"):
        numba_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)


def test_versions_it_was_written_for(monkeypatch):
    """Another triton / numba-cuda than SUPPORTED names: a clear error (tests skip with the same text)."""
    monkeypatch.setitem(testing.SUPPORTED, "triton", "2.0")
    monkeypatch.setitem(testing.SUPPORTED, "numba-cuda", "0.1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    for backend in ("triton", "numba"):
        why = testing.unavailable_reason(backend)
        assert why is not None and "patches the internals" in why, why
        with pytest.raises(testing.UnsupportedVersion, match=why.split(":")[0]):
            with concurrent_programs(2, backends=(backend,)):
                pass
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in testing.unavailable_reason("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        with concurrent_programs(2, backends=("triton",)):
            pass


@needs_triton
def test_barrier_timeout_mode_with_concurrent_programs(monkeypatch):
    """The barrier's debug mode (LSTM_GPU_BARRIER_TIMEOUT) with every program running: a generous poll
    count leaves the results right; a barrier counting one program too many then times out and the
    launcher raises, before the harness's deadline."""
    n = 2
    H = triton_h(n, 3, torch.float64)
    inp = make_inputs(3, 3, H, torch.float64)
    lengths = lengths_for(3, 3)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", str(10 ** 8))
    with concurrent_programs(n):
        out, grads = run_layer("triton", inp, lengths, False)
    ref, ref_grads = reference_layer(inp, lengths, False)
    for name, got, want in zip(NAMES, out + tuple(grads), ref + tuple(ref_grads)):
        assert_close(got, want, 1e-12, what=name)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "2000")
    with pytest.raises(RuntimeError, match="timed out"):
        with concurrent_programs(n, deadline=60), _triton_barrier_mutation("count+1"):
            triton_lstm.forward(inp["gx"], inp["h0"], inp["c0"], inp["w"], None, None, False, True)


@needs_triton
def test_polled_exchange_timeout_mode(monkeypatch):
    """The same debug mode on the polled h exchange (it polls the data, not a counter): a generous poll
    count leaves the forward right; a reader that never accepts the data times out and the launcher
    raises, before the harness's deadline."""
    _with_polled_h(monkeypatch)
    n, dtype = 3, torch.float16
    H = triton_h(n, 3, dtype)
    inp = make_inputs(3, 3, H, dtype)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", str(10 ** 8))
    with concurrent_programs(n):
        out = run_forward("triton", inp, None, False)
    ref, _ = reference_layer(inp, None, False)
    for name, got, want in zip(NAMES, out, ref):
        assert_close(got, want, TOL[dtype][0], what=name)
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "200")
    with pytest.raises(RuntimeError, match="timed out"):
        with concurrent_programs(n, deadline=60), _polled_exchange_mutation("never_done"):
            run_forward("triton", inp, None, False)


def test_cpu_modes_are_on():
    """The suite runs with both CPU modes (conftest.py) where there is no GPU, so the tests above ran."""
    if not torch.cuda.is_available():
        assert host.cpu_emulation("triton") and host.cpu_emulation("numba")
