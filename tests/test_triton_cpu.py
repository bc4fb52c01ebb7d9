"""The Triton LSTM backend on CPU (TRITON_INTERPRET=1, set by conftest.py): one program, no barrier.

Every output of forward (y, h_n, c_n, gates, cells) and of backward (dgates, dh0, dc0) against the float64
reference, for both matmul paths (tl.dot and broadcast-multiply-sum), with lengths (none, sorted,
unsorted), reverse, given h0/c0, several batch tiles; then end to end through lstm_gpu.LSTM vs
torch.nn.LSTM. Sizes stay tiny (T ≤ 6, H ≤ 24, B ≤ 3): the interpreter runs one numpy op at a time.
bfloat16 is not tested here (the interpreter stores bf16 as raw uint16): tests/test_triton_gpu.py does.
"""
import dataclasses

import pytest
import torch
import triton
import triton.language as tl

from lstm_gpu import reference
from lstm_gpu.backends import select_backend, unsupported_reason
from lstm_gpu.kernels import host, triton_config, triton_lstm
from lstm_gpu.kernels.triton_barrier import grid_barrier
from lstm_gpu.kernels.triton_config import dot_shared_bytes, gpu_config, interpreter_config, k_pieces
from helpers import packed_bidirectional_vs_torch

pytestmark = pytest.mark.skipif(not host.cpu_emulation("triton"), reason="needs TRITON_INTERPRET=1 (no GPU)")

# (dtype, tolerance on outputs, tolerance on gradients) vs the float64 reference
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-6, 5e-6), torch.float16: (4e-3, 1e-2)}
PATHS = [(torch.float64, False), (torch.float32, False), (torch.float32, True), (torch.float16, True),
         (torch.float16, False)]
LENGTHS = {"none": None, "sorted": [6, 4, 1], "unsorted": [2, 6, 5]}


def make_inputs(T, B, H, dtype, seed=0, given_state=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    gx = r(T, B, 4 * H)
    h0 = r(B, H) if given_state else torch.zeros(B, H, dtype=dtype)
    c0 = r(B, H) if given_state else torch.zeros(B, H, dtype=dtype)
    w = r(4 * H, H, scale=H ** -0.5)
    grads = r(T, B, H), r(B, H), r(B, H)
    return gx, h0, c0, w, grads


def assert_close(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def run_both(T, B, H, dtype, use_dot, lengths, reverse, given_state=True, block_b=None, k_split=None):
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, dtype, given_state=given_state)
    lens = None if lengths is None else torch.tensor(lengths)
    cfg, bcfg = (interpreter_config(B=B, H=H, dtype=dtype, use_dot=use_dot, backward=b) for b in (False, True))
    if k_split is not None:             # the per-gate dot in K chunks, forward too (on a GPU: H = 1536, backward)
        cfg = bcfg = dataclasses.replace(bcfg, k_split=k_split)
    if block_b is not None:
        cfg, bcfg = dataclasses.replace(cfg, block_b=block_b), dataclasses.replace(bcfg, block_b=block_b)
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, lens, reverse, True, config=cfg)
    d64 = lambda t: t.double()  # noqa: E731
    ref = reference.forward(d64(gx), d64(h0), d64(c0), d64(w), None, lens, reverse, True)
    grads = triton_lstm.lstm_bwd(dy, dhn, dcn, out[3], out[4], c0, w, lens, reverse, config=bcfg)
    ref_grads = reference.backward(d64(dy), d64(dhn), d64(dcn), ref[3], ref[4], d64(h0), d64(c0), ref[0],
                                   d64(w), None, lens, reverse)[:3]
    return out, ref, grads, ref_grads


@pytest.mark.parametrize("dtype,use_dot", PATHS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_forward_backward_vs_reference(dtype, use_dot, lengths, reverse):
    T, B, H = 6, 3, 20
    out, ref, grads, ref_grads = run_both(T, B, H, dtype, use_dot, LENGTHS[lengths], reverse)
    tol, gtol = TOL[dtype]
    acc = reference.accumulation_dtype(dtype)
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, tol, name)
    assert out[0].dtype == out[1].dtype == out[2].dtype == dtype
    assert out[3].dtype == out[4].dtype == acc
    for name, got, want in zip(["dgates", "dh0", "dc0"], grads, ref_grads):
        assert_close(got, want, gtol, name)
        assert got.dtype == acc, name


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_several_batch_tiles(reverse):
    """B > BLOCK_B: the state goes through the scratch slices instead of registers."""
    out, ref, grads, ref_grads = run_both(5, 3, 12, torch.float64, False, [3, 5, 2], reverse, block_b=2)
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"],
                               out + grads, ref + ref_grads):
        assert_close(got, want, 1e-12, name)


@triton.jit
def _chunk_sum_kernel(p_in, p_out, KS: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    o = (tl.arange(0, KS)[:, None, None] * R + tl.arange(0, R)[None, :, None]) * C + tl.arange(0, C)[None, None, :]
    o2 = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.store(p_out + o2, triton_lstm._chunk_sum(tl.load(p_in + o)))


@pytest.mark.parametrize("ks", [1, 2, 4, 8, 16])
def test_chunk_sum_adds_every_chunk(ks):
    """``_chunk_sum`` (the K chunks moved to the last axis, then halved by split-and-add): the sum over axis 0,
    for every chunk count the configs use."""
    x = torch.randn(ks, 16, 8)
    out = torch.empty(16, 8)
    _chunk_sum_kernel[(1,)](x, out, KS=ks, R=16, C=8)
    torch.testing.assert_close(out, x.sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("k_split", [2, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("tail_after", [False, True], ids=["tail-with", "tail-after"])
def test_k_split_dot(dtype, k_split, reverse, tail_after, monkeypatch):
    """tl.dot with K in chunks (independent accumulators summed after the products) and in two pieces, as
    the GPU configs run it: H = 40 is K = 32 + a tail piece of 16, its last 8 masked, each piece in k_split
    chunks; forward reads h's tail with the first piece or (as at H = 1536 on a GPU, where both tiles do not
    fit: forced here by a zero shared-memory budget) after its products; unsorted lengths."""
    if tail_after:
        monkeypatch.setattr(triton_config, "DOT_SHARED_BUDGET", 0)
    cfg = interpreter_config(B=3, H=40, dtype=dtype, use_dot=True, backward=True)
    assert (cfg.block_k, cfg.k_tail, cfg.tail_after(dtype), cfg.pieces) == (32, 16, tail_after, 0)
    out, ref, grads, ref_grads = run_both(5, 3, 40, dtype, True, [2, 5, 4], reverse, k_split=k_split)
    tol, gtol = TOL[dtype]
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, tol, name)
    for name, got, want in zip(["dgates", "dh0", "dc0"], grads, ref_grads):
        assert_close(got, want, gtol, name)


@pytest.mark.parametrize("H,pieces", [(20, 2), (40, 3), (56, 4), (16, 1)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "transposed"])
def test_fused_gates_forward(H, pieces, reverse, transposed, monkeypatch):
    """The forward's fused tensor-core dot (the four gates in one [BB, 4·HT] product per piece of K, each piece
    its own accumulator; the GPU's forward for fp16/bf16 wherever h's pieces fit beside the weights), as rows
    or transposed ([4·HT, BB] = W · hᵀ, the GPU's wgmma form): K in 1-4 pieces of 16, the last partly masked
    (H = 20, 40, 56), every output and gradient vs the reference, unsorted lengths; and the per-gate path
    (pieces = 0) gives the same within fp16 rounding."""
    monkeypatch.setattr(triton_config, "TRANSPOSED_GATES", transposed)
    monkeypatch.setattr(triton_config, "FOLDED_GATES", False)      # K folded into M: test_folded_gates_forward
    cfg = interpreter_config(B=3, H=H, dtype=torch.float16, use_dot=True)
    assert (cfg.pieces, cfg.block_k, cfg.k_split, cfg.transposed, cfg.fold) == (pieces, 16, 1, transposed, 1), cfg
    out, ref, grads, ref_grads = run_both(5, 3, H, torch.float16, True, [2, 5, 4], reverse)
    tol, gtol = TOL[torch.float16]
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"], out + grads,
                               ref + ref_grads):
        assert_close(got, want, tol if name in ("y", "h_n", "c_n", "gates", "cells") else gtol, name)
    gx, h0, c0, w, _ = make_inputs(5, 3, H, torch.float16)
    per_gate = interpreter_config(B=3, H=H, dtype=torch.float16, use_dot=True, backward=True)
    other = triton_lstm.lstm_fwd(gx, h0, c0, w, torch.tensor([2, 5, 4]), reverse, True, config=per_gate)
    for name, a, b in zip(["y", "h_n", "c_n", "gates", "cells"], out, other):
        assert_close(a, b, tol, name)


@pytest.mark.parametrize("H,pieces", [(20, 1), (41, 2), (80, 3), (100, 4)], ids=str)
@pytest.mark.parametrize("B,polled", [(3, True), (3, False), (20, False)], ids=["polled", "counter", "two-tiles"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_folded_gates_forward(H, pieces, B, polled, reverse, monkeypatch):
    """The forward with K folded into M (the GPU's fp16/bf16 forward at H ≤ 768: each half of K multiplied by
    its own rows of the weights, held in registers, and the two matching blocks of the [2·4·HT, 2·BB] product
    added): K/2 in 1-4 pieces of 16 (FOLD_KC lowered to reach them at these sizes; the second half partly
    masked at H = 41, 80 and 100), h polled or through the counter, one batch tile or two (the second partly
    masked), every output and gradient vs the reference, unsorted lengths. Forced on a wrong block (f' = 1 - f)
    or with one half of K dropped, it fails here."""
    monkeypatch.setattr(triton_config, "FOLD_KC", 16)
    monkeypatch.setattr(triton_config, "POLLED_H", polled)
    cfg = interpreter_config(B=B, H=H, dtype=torch.float16, use_dot=True)
    assert (cfg.fold, cfg.pieces, cfg.block_k, cfg.transposed) == (2, pieces, 16, True), cfg
    assert cfg.polled_exchange(torch.float16) == polled
    lengths = [2, 5, 4] + [5, 1, 3, 4] * 4 + [5] if B == 20 else [2, 5, 4]
    out, ref, grads, ref_grads = run_both(5, B, H, torch.float16, True, lengths, reverse)
    tol, gtol = TOL[torch.float16]
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"], out + grads,
                               ref + ref_grads):
        assert_close(got, want, tol if name in ("y", "h_n", "c_n", "gates", "cells") else gtol, name)


@pytest.mark.parametrize("one_round", [False, True], ids=["per-gate", "one-round"])
@pytest.mark.parametrize("H", [16, 40], ids=["K16", "K32+16"])
def test_backward_dz_loads(one_round, H):
    """The backward's loads of dz_t issued gate by gate or all four gates at once (one serial L2 round trip each
    on a GPU), K in one piece or a first piece and a tail: every gradient vs the reference."""
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(5, 3, H, torch.float16)
    lens = torch.tensor([2, 5, 4])
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, lens, True, True)
    bcfg = interpreter_config(B=3, H=H, dtype=torch.float16, backward=True)
    assert bcfg.dz_one_round and bcfg.k_tail == (16 if H == 40 else 0), bcfg
    grads = triton_lstm.lstm_bwd(dy, dhn, dcn, out[3], out[4], c0, w, lens, True,
                                 config=dataclasses.replace(bcfg, dz_one_round=one_round))
    d64 = lambda t: t.double()  # noqa: E731
    ref = reference.forward(d64(gx), d64(h0), d64(c0), d64(w), None, lens, True, True)
    ref_grads = reference.backward(d64(dy), d64(dhn), d64(dcn), ref[3], ref[4], d64(h0), d64(c0), ref[0], d64(w),
                                   None, lens, True)[:3]
    for name, got, want in zip(["dgates", "dh0", "dc0"], grads, ref_grads):
        assert_close(got, want, TOL[torch.float16][1], name)


def test_backward_refuses_a_forward_config():
    cfg = interpreter_config(B=3, H=20, dtype=torch.float16, use_dot=True)
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(2, 3, 20, torch.float16)
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, None, False, True, config=cfg)
    with pytest.raises(ValueError, match="forward config"):
        triton_lstm.lstm_bwd(dy, dhn, dcn, out[3], out[4], c0, w, config=cfg)


@pytest.mark.parametrize("B,H,bb", [(1, 20, 16), (3, 20, 16), (16, 20, 16), (3, 40, 16), (20, 20, 32)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_polled_h_exchange(B, H, bb, reverse):
    """fp16 on tensor cores with h exchanged in write-once slots the readers poll (``polled_h``, no step
    counter): every output vs the reference, unsorted lengths, given h0/c0, on the fused forward; H = 40
    reads h in three pieces of K (16 each, the last half masked), polled together; B = 20 in one 32-row tile (as
    gpu_config's 32-row tiles on 8 warps)."""
    T = 5
    lengths = ([3, 5, 1, 4, 2] * 4)[:B] if B > 1 else [4]
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, torch.float16)
    lens = torch.tensor(lengths)
    cfg = dataclasses.replace(interpreter_config(B=B, H=H, dtype=torch.float16, use_dot=True), polled_h=True,
                              block_b=bb, num_warps=8 if bb == 32 else 4)
    assert cfg.polled_exchange(torch.float16)
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, lens, reverse, True, config=cfg)
    d64 = lambda t: t.double()  # noqa: E731
    ref = reference.forward(d64(gx), d64(h0), d64(c0), d64(w), None, lens, reverse, True)
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, TOL[torch.float16][0], name)


def test_polled_exchange_negative_zero(monkeypatch):
    """The polled exchange marks an element not yet written with the bits of -0.0 (UNWRITTEN): an h of -0.0,
    given in h0 or computed (row 1: o = σ(-17) ≈ 4e-8 times tanh(c) ≈ -0.4 rounds to -0.0 in fp16), is stored
    as +0.0, or its readers would wait for it forever. The poll's debug time-out turns such a wait into an
    error instead of a hang (mutation run by hand: without the +0.0, "timed out")."""
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "1000")
    T, B, H = 3, 2, 20
    gx, h0, c0, w, _ = make_inputs(T, B, H, torch.float16)
    h0[0, :7] = -0.0
    h0[1], c0[1] = -0.0, 0.0
    for gate, z in enumerate([10.0, 0.0, -0.5, -17.0]):    # i ≈ 1, f = 0.5, g ≈ -0.46, o ≈ 4e-8
        gx[:, 1, gate * H:(gate + 1) * H] = z
    d64 = lambda t: t.double()  # noqa: E731
    ref = reference.forward(d64(gx), d64(h0), d64(c0), d64(w), None, None, False, True)
    cfg = dataclasses.replace(interpreter_config(B=B, H=H, dtype=torch.float16, use_dot=True), polled_h=True)
    assert cfg.polled_exchange(torch.float16)
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, None, False, True, config=cfg)
    assert torch.signbit(out[0][:, 1]).all() and (out[0][:, 1] == 0).all()     # the case: h_t = -0.0
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, TOL[torch.float16][0], name)


@pytest.mark.parametrize("B,H", [(3, 20), (16, 40)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_polled_dz_exchange(B, H, reverse, monkeypatch):
    """The backward with dz exchanged polled (``polled_backward``: a 16-bit slot per step, written once, the
    readers poll it; no step counter), the interpreter's default at one 16-bit tile as gpu_config's: dz, dh0
    and dc0 vs the reference, unsorted lengths. dy, dh_n and dc_n are zero at the first steps the backward
    takes, so dz there is ±0: a dz_f = 0 · c_{t-1} < 0 is -0.0, which the exchange stores as +0.0 (the bits
    of -0.0 mark what is not yet written: without that the readers wait forever, which the poll's debug
    time-out turns into an error; mutation run by hand)."""
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "1000")
    T = 5
    lengths = torch.tensor(([3, 5, 1, 4, 2] * 4)[:B])
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, torch.float16)
    dhn.zero_(), dcn.zero_()
    dy[slice(T - 2, T) if not reverse else slice(0, 2)] = 0.0     # the two steps the backward takes first
    cfg = interpreter_config(B=B, H=H, dtype=torch.float16, backward=True)
    assert cfg.polled_backward(torch.float16)
    fwd = triton_lstm.lstm_fwd(gx, h0, c0, w, lengths, reverse, True)
    got = triton_lstm.lstm_bwd(dy, dhn, dcn, fwd[3], fwd[4], c0, w, lengths, reverse, config=cfg)
    d64 = lambda t: t.double()  # noqa: E731
    want = reference.backward(d64(dy), d64(dhn), d64(dcn), d64(fwd[3]), d64(fwd[4]), d64(h0), d64(c0), d64(fwd[0]),
                              d64(w), None, lengths, reverse)
    assert (torch.signbit(got[0]) & (got[0] == 0)).any()       # the case: some dz is -0.0
    for name, g, r in zip(["dgates", "dh0", "dc0"], got, want):
        assert_close(g, r, TOL[torch.float16][1], name)


def test_polled_slots_beyond_their_budget_take_the_counter(monkeypatch):
    """The polled exchanges hold a slot per step (forward: as much memory as y; backward: half of dgates); above
    ``POLLED_SLOTS_BYTES`` the launchers take the step counter's two slots instead: same results, and the slots
    they allocate are the counter's (recorded)."""
    T, B, H = 6, 3, 20
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, torch.float16)
    fcfg = interpreter_config(B=B, H=H, dtype=torch.float16)
    bcfg = interpreter_config(B=B, H=H, dtype=torch.float16, backward=True)
    assert fcfg.polled_exchange(torch.float16) and bcfg.polled_backward(torch.float16)
    results, shapes = [], []
    real_full, real_empty = torch.full, torch.empty
    monkeypatch.setattr(torch, "full", lambda size, *a, **k: shapes.append(tuple(size)) or real_full(size, *a, **k))
    monkeypatch.setattr(torch, "empty", lambda *size, **k: shapes.append(tuple(size)) or real_empty(*size, **k))
    for budget in (1 << 30, 64):
        monkeypatch.setattr(triton_lstm, "POLLED_SLOTS_BYTES", budget)
        shapes.clear()
        out = triton_lstm.lstm_fwd(gx, h0, c0, w, None, False, True, config=fcfg)
        grads = triton_lstm.lstm_bwd(dy, dhn, dcn, out[3], out[4], c0, w, config=bcfg)
        results.append(list(out) + list(grads))
        polled = (T + 1, B, H) in shapes and (T, B, 4 * H) in shapes
        assert polled == (budget > 64), shapes
    for a, b in zip(*results):
        assert_close(a, b, TOL[torch.float16][1], "polled vs counter")


@pytest.mark.parametrize("dtype,use_dot,B,rows", [(torch.float64, False, 5, 4), (torch.float16, True, 20, 16),
                                                  (torch.float16, True, 32, 16)],
                         ids=["broadcast", "dot", "dot-whole-groups"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_batch_groups(dtype, use_dot, B, rows, reverse):
    """The batch split in two groups of rows, each its own program and step counter (grid (1, 2)): every
    output and gradient as with one group; the second group is partial (whole with B = 32: no row masks),
    lengths unsorted."""
    lengths = ([3, 5, 1, 4, 2] * B)[:B]
    T, H = 5, 12
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, dtype)
    lens = torch.tensor(lengths)
    cfg, bcfg = (dataclasses.replace(interpreter_config(B=B, H=H, dtype=dtype, use_dot=use_dot, backward=b),
                                     num_programs=2, batch_groups=2, group_rows=rows, block_b=16 if use_dot else 2)
                 for b in (False, True))
    out = triton_lstm.lstm_fwd(gx, h0, c0, w, lens, reverse, True, config=cfg)
    grads = triton_lstm.lstm_bwd(dy, dhn, dcn, out[3], out[4], c0, w, lens, reverse, config=bcfg)
    d64 = lambda t: t.double()  # noqa: E731
    ref = reference.forward(d64(gx), d64(h0), d64(c0), d64(w), None, lens, reverse, True)
    ref_grads = reference.backward(d64(dy), d64(dhn), d64(dcn), ref[3], ref[4], d64(h0), d64(c0), ref[0], d64(w),
                                   None, lens, reverse)[:3]
    tol, gtol = TOL[dtype]
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, tol, name)
    for name, got, want in zip(["dgates", "dh0", "dc0"], grads, ref_grads):
        assert_close(got, want, gtol, name)


def test_full_tiles_only_where_every_tile_is_whole():
    """The row masks become constants only where each batch group is one whole tile: (B, rows per batch group,
    rows per tile)."""
    full = triton_lstm._full_tiles
    assert full(16, 16, 16) and full(64, 32, 32) and full(32, 16, 16)
    assert not full(1, 1, 16)           # B = 1: one row of a 16-row tile
    assert not full(17, 17, 16)         # a whole tile, then a short one
    assert not full(20, 16, 16)         # the second group has 4 rows
    assert not full(64, 32, 16)         # two whole tiles a group: masks kept (a spill, see _full_tiles)
    assert not full(0, 16, 16)


def test_batch_groups_must_match_the_batch():
    cfg = dataclasses.replace(interpreter_config(B=8, H=4, dtype=torch.float32), num_programs=2, batch_groups=2,
                              group_rows=4)
    gx, h0, c0, w, _ = make_inputs(2, 3, 4, torch.float32)           # B = 3: one group of 4 rows, not two
    with pytest.raises(ValueError, match="groups"):
        triton_lstm.lstm_fwd(gx, h0, c0, w, config=cfg)


def test_dot_several_batch_tiles():
    """tl.dot with B > 16: two 16-row tiles walk the same W slice, the state in scratch slices."""
    out, ref, grads, ref_grads = run_both(3, 18, 20, torch.float32, True, None, False, k_split=2)
    tol, gtol = TOL[torch.float32]
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells"], out, ref):
        assert_close(got, want, tol, name)
    for name, got, want in zip(["dgates", "dh0", "dc0"], grads, ref_grads):
        assert_close(got, want, gtol, name)


@pytest.mark.parametrize("H,B,T", [(1, 1, 1), (5, 2, 3), (24, 1, 4), (17, 3, 2)])
def test_awkward_shapes(H, B, T):
    """H far from a power of two (masked K and units), B = 1, T = 1, zero initial state."""
    out, ref, grads, ref_grads = run_both(T, B, H, torch.float64, False, None, False, given_state=False)
    for name, got, want in zip(["y", "h_n", "c_n", "gates", "cells", "dgates", "dh0", "dc0"],
                               out + grads, ref + ref_grads):
        assert_close(got, want, 1e-12, name)


def test_backend_contract_and_inference():
    """The backend entry points of backends.py: forward(save=False) returns no saved tensors; backward
    returns dw_hr = None; the results equal the launcher's."""
    T, B, H = 4, 2, 8
    gx, h0, c0, w, (dy, dhn, dcn) = make_inputs(T, B, H, torch.float64)
    y, hn, cn, gates, cells = triton_lstm.forward(gx, h0, c0, w, None, None, False, False)
    assert gates is None and cells is None
    ref = reference.forward(gx, h0, c0, w)
    for name, got, want in zip(["y", "h_n", "c_n"], (y, hn, cn), ref):
        assert_close(got, want, 1e-12, name)
    dgates, dh0, dc0, dw_hr = triton_lstm.backward(dy, dhn, dcn, ref[3], ref[4], h0, c0, ref[0], w, None, None,
                                                  False)
    assert dw_hr is None
    ref_grads = reference.backward(dy, dhn, dcn, ref[3], ref[4], h0, c0, ref[0], w)
    for name, got, want in zip(["dgates", "dh0", "dc0"], (dgates, dh0, dc0), ref_grads):
        assert_close(got, want, 1e-12, name)


@triton.jit
def _barrier_n_times(p_bar, N, NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr):
    for s in range(N):
        grid_barrier(p_bar, s, NUM_PROGRAMS, TIMEOUT)


def test_grid_barrier_one_program_counts_every_step():
    """The barrier with a grid of one: one arrival per step, and it never waits for more."""
    for n in (1, 2, 5):
        for timeout in (0, 10):
            word = torch.zeros(2, dtype=torch.int64)
            _barrier_n_times[(1,)](word, n, NUM_PROGRAMS=1, TIMEOUT=timeout)
            assert word.tolist() == [n, 0]


def test_grid_barrier_waiting_for_a_missing_program_times_out():
    """Debug mode: a barrier for two programs with only one running gives up and raises its flag; every
    later barrier of the launch is then skipped (no second wait)."""
    word = torch.zeros(2, dtype=torch.int64)
    _barrier_n_times[(1,)](word, 3, NUM_PROGRAMS=2, TIMEOUT=50)
    assert word.tolist() == [3, 1]


def test_unsupported_reasons(monkeypatch):
    cpu = torch.device("cpu")
    assert triton_lstm.unsupported(device=cpu, dtype=torch.float32, hidden_size=8, batch=2) is None
    assert "bfloat16" in triton_lstm.unsupported(device=cpu, dtype=torch.bfloat16, hidden_size=8, batch=2)
    assert "int" in triton_lstm.unsupported(device=cpu, dtype=torch.int32, hidden_size=8, batch=2)
    cuda = torch.device("cuda")
    why = triton_config.unsupported_reason(device=cuda, dtype=torch.float32, hidden_size=4096, batch=8, n_sm=132)
    assert why is not None and "4096" in why and "budget" in why
    assert triton_config.unsupported_reason(device=cuda, dtype=torch.float32, hidden_size=512, batch=8, n_sm=132) is None
    # auto picks triton on CUDA when it can run the call, cuDNN otherwise
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(triton_config, "sm_count", lambda device: 132)
    assert select_backend("auto", device="cuda", dtype=torch.float32, hidden_size=512, batch=8) == "cudnn"
    assert select_backend("auto", device="cuda", dtype=torch.float32, hidden_size=4096, batch=8) == "cudnn"
    assert select_backend("auto", device="cuda", dtype=torch.float32, hidden_size=512, proj_size=8) == "cudnn"
    # named, a projection runs (folded into W_hh): the limits are hidden_size's
    assert select_backend("triton", device="cuda", dtype=torch.float32, hidden_size=512, proj_size=8) == "triton"
    with pytest.raises(ValueError, match="budget"):
        select_backend("triton", device="cuda", dtype=torch.float32, hidden_size=4096, batch=8)
    assert unsupported_reason("triton", device=cuda, dtype=torch.float16, hidden_size=256, batch=64) is None


def test_fp32_precision_setting(monkeypatch):
    monkeypatch.setattr(triton_config, "FP32_PRECISION", None)
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    assert triton_config.fp32_precision() == "ieee"
    monkeypatch.setenv("TRITON_F32_DEFAULT", "tf32")
    assert triton_config.fp32_precision() == "tf32"
    monkeypatch.setattr(triton_config, "FP32_PRECISION", "ieee")
    assert triton_config.fp32_precision() == "ieee"


@pytest.mark.parametrize("dtype,proj", [(torch.float64, 0), (torch.float32, 0), (torch.float64, 4), (torch.float32, 2)],
                         ids=["float64", "float32", "float64-proj", "float32-proj"])
def test_module_vs_torch_lstm_bidirectional_packed(dtype, proj):
    """lstm_gpu.LSTM(backend="triton") vs torch.nn.LSTM: 2 layers, bidirectional, unsorted packed input; with a
    projection too (the kernels run it folded into W_hh, lstm_gpu/functional.py)."""
    packed_bidirectional_vs_torch("triton", T=5, B=3, I=4, H=6, lengths=torch.tensor([3, 5, 2]), dtype=dtype,
                                  tol=1e-10 if dtype == torch.float64 else 2e-5, proj_size=proj)

def test_k_pieces_cover_h_with_little_padding():
    """K on the tl.dot path: a power of two, or a power of two and a smaller power-of-two tail (at least a
    quarter of it, so each of its ≤ 8 chunks keeps tl.dot's K ≥ 16), covering H; never more padding than one
    power of two would have. H = 1536 in 16 bits then fits on an H100 (96 programs, 224 KB)."""
    assert [k_pieces(H) for H in (20, 40, 768, 1024, 1100, 1536)] == [
        (32, 0), (32, 16), (512, 256), (1024, 0), (1024, 256), (1024, 512)]
    for H in range(1, 4097):
        k, tail = k_pieces(H)
        one = max(16, 1 << (H - 1).bit_length())
        assert k & (k - 1) == 0 and tail & (tail - 1) == 0 and H <= k + tail <= one, (H, k, tail)
        assert tail == 0 or (k // 4 <= tail < k and tail >= 16), (H, k, tail)
    cfg = gpu_config(B=16, H=1536, dtype=torch.bfloat16, n_sm=132)
    assert (cfg.use_dot, cfg.block_k, cfg.k_tail, cfg.num_programs) == (True, 1024, 512, 96)
    assert dot_shared_bytes(cfg.ht, cfg.block_k, cfg.block_b, torch.bfloat16, cfg.k_tail) == 224 * 1024


def test_tf32_forward_on_tensor_cores_up_to_h1024(monkeypatch):
    """tf32 on a 132-SM H100: 16 units a program where their fp32 weights fit (H ≤ 768), 8 units with the gates
    fused above that, up to H = 1024 (128 programs, W 128 KB + an h tile 64 KB); the backward (dh's N would be 8)
    and fp32-ieee stay on CUDA cores there; H = 1280 (160 programs of 8) is refused as before."""
    monkeypatch.setattr(triton_config, "FP32_PRECISION", "tf32")
    cfg = lambda H, B=64, **k: gpu_config(B=B, H=H, dtype=torch.float32, n_sm=132, **k)   # noqa: E731
    assert (cfg(768).ht, cfg(768).use_dot) == (16, True)
    for H in (800, 1024):
        c = cfg(H)
        assert (c.ht, c.use_dot, c.pieces, c.block_b, c.num_warps) == (8, True, 4, 16, 4), c
        assert c.num_programs == -(-H // 8) and c.shared_bytes(torch.float32) == dot_shared_bytes(8, 1024, 16, torch.float32)
        assert not cfg(H, backward=True).use_dot
    cuda = torch.device("cuda")
    assert triton_config.unsupported_reason(device=cuda, dtype=torch.float32, hidden_size=1024, batch=64, n_sm=132) is None
    assert triton_config.unsupported_reason(device=cuda, dtype=torch.float32, hidden_size=1280, batch=64, n_sm=132)
    monkeypatch.setattr(triton_config, "FP32_PRECISION", "ieee")
    assert not cfg(1024).use_dot


def test_h_exchange_rule(monkeypatch):
    """gpu_config polls the forward's h exchange where a batch group is one 16-row tile of 9-16 rows of a 16-bit
    fused forward (K ≤ 1024), transposed on 4 warps (K folded into M on 8 at H ≤ 768): where the H200 measured the
    poll faster (B16 H768 fp16 and bf16); elsewhere the step counter, measured faster at B1 H256 fp16, B64 H1024
    bf16 (one 32-row tile) and in the backward (B16 H768 fp16). POLLED_H / LSTM_GPU_POLLED_H force either."""
    tc = triton_config
    monkeypatch.setattr(tc, "POLLED_H", None)
    monkeypatch.delenv("LSTM_GPU_POLLED_H", raising=False)
    cfg = lambda B, H, dtype=torch.float16, **k: tc.gpu_config(B=B, H=H, dtype=dtype, n_sm=132, **k)   # noqa: E731
    k1024 = triton.__version__.startswith("3.6")                  # K = 1024 with the GPU machine's triton only
    for B, H, dtype in [(16, 768, torch.float16), (16, 768, torch.bfloat16), (32, 512, torch.float16), (9, 256,
                        torch.float16)] + ([(16, 1024, torch.bfloat16), (16, 1024, torch.float16)] if k1024 else []):
        c = cfg(B, H, dtype)                                        # B32 H512: 2 batch groups of 16 rows
        folded = H <= triton_config.FOLD_MAX_H
        assert c.polled_exchange(dtype) and c.transposed and c.num_warps == (8 if folded else 4), (B, H, c)
        assert c.fold == (2 if folded else 1), (B, H, c)
    for B, H, dtype in [(16, 1536, torch.bfloat16), (16, 768, torch.float32), (5, 1000, torch.float16),
                        (1, 256, torch.float16), (8, 256, torch.float16), (64, 1024, torch.bfloat16),
                        (5, 1000, torch.bfloat16), (1, 1024, torch.float16)] + (
                            [] if k1024 else [(16, 1024, torch.bfloat16)]):
        assert not cfg(B, H, dtype).polled_exchange(dtype), (B, H)
    assert not cfg(16, 768, backward=True).polled_backward(torch.float16)
    monkeypatch.setenv("LSTM_GPU_POLLED_H", "1")                    # forced: the polled paths measured against
    c = cfg(64, 1024, torch.bfloat16)                               # 2 batch groups of one 32-row tile each
    assert c.polled_exchange(torch.bfloat16) and c.block_b == 32 and c.num_warps == 8 and c.rows_per_group(64) == 32, c
    assert cfg(16, 768, backward=True).polled_backward(torch.float16)
    assert cfg(1, 256).polled_exchange(torch.float16)
    monkeypatch.setenv("LSTM_GPU_POLLED_H", "0")
    c = cfg(16, 768)
    assert not c.polled_h and c.fold == 2 and c.num_warps == 8, c          # the counter's config: folded too
    monkeypatch.setattr(tc, "FOLDED_GATES", False)
    c = cfg(16, 768)
    assert not c.polled_h and not c.transposed and c.num_warps == 2, c     # unfolded: rows, 2 warps
    monkeypatch.setattr(tc, "FOLDED_GATES", None)
    monkeypatch.setattr(tc, "POLLED_H", True)                               # the module switch wins
    assert cfg(16, 768).polled_h and cfg(64, 1024, torch.bfloat16).polled_h


def test_backward_takes_eight_warps_on_the_tensor_cores():
    """The 16-bit backward runs on 8 warps (its K chunks summed spread over them: modeled faster in every headline
    case, kernels/triton_config.py); the forward's rules and the fp32-IEEE FMA backward (4) are not touched."""
    cfg = lambda B, H, dtype, **k: gpu_config(B=B, H=H, dtype=dtype, n_sm=132, **k)   # noqa: E731
    for B, H, dtype in [(16, 768, torch.float16), (64, 1024, torch.bfloat16), (1, 256, torch.float16),
                        (16, 1536, torch.bfloat16), (5, 1000, torch.bfloat16)]:
        c = cfg(B, H, dtype, backward=True)
        assert c.use_dot and c.num_warps == 8, (B, H, c)
    assert cfg(16, 512, torch.float32, backward=True).num_warps == 4                    # FMA path (ieee)
    assert cfg(16, 768, torch.float16).num_warps == 8 and cfg(16, 768, torch.float16).fold == 2   # forward: folded


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_step_sync_switch_only_removes_the_wait(direction, monkeypatch):
    """bench/insitu.py's switch: with ``STEP_SYNC`` off the launch is the same but for NUM_PROGRAMS = 1 (no grid
    barrier compiled) and the counter exchange (a polled exchange would still wait); on, the grid's programs."""
    from lstm_gpu.kernels import triton_sm90
    on = triton_sm90.capture(direction, B=16, H=768, T=8, dtype=torch.float16)
    monkeypatch.setattr(triton_lstm, "STEP_SYNC", False)
    off = triton_sm90.capture(direction, B=16, H=768, T=8, dtype=torch.float16)
    assert on.kwargs["NUM_PROGRAMS"] == on.grid[0] == 48 and off.kwargs["NUM_PROGRAMS"] == 1 and off.grid == on.grid
    assert not off.kwargs["POLLED"]
    same = lambda k: k not in ("NUM_PROGRAMS", "POLLED")     # noqa: E731
    assert {k: v for k, v in on.kwargs.items() if same(k)} == {k: v for k, v in off.kwargs.items() if same(k)}
