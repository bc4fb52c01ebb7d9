"""One launch for a whole LSTM stack in Triton: every layer and both directions, forward and backward.

Supports: L ≥ 1 layers, one or two directions, packed sequences (per-sequence ``lengths``, any order), h0/c0,
dropout between layers (a counter-based mask from a seed, regenerated in backward), no projection. On a GPU:
fp16/bf16 (and fp32 with tf32) on tensor cores, B ≤ 16, and only while every (layer, direction) group fits on
the chip at once (kernels/triton_stack_config.py says why not; the module then runs the per-layer launches).
Tested on: the Triton CPU interpreter (one program per group, programs run one after another) and every program
at once through ``lstm_gpu.testing.concurrent_programs`` (several programs per group), fp64/fp32/fp16 against
torch.nn.LSTM (tests/test_stack.py); compiled for sm_90 by bench/static_stack.py.
Run on ONE GPU so far (an H200, 2026-11-28): B16 H512 T1024 fp16, 2 layers, measured 0.53x (unidirectional) and
0.54x (bidirectional) the time of the per-layer launches, forward, correct against the reference; bidirectional
single layers in the smoke grid matched. tests/test_stack_gpu.py has not run yet; bf16 stacks untimed.
Modeled (python -m bench.static_stack; MODELED FROM sm_90 CODE, NOT MEASURED, triton 3.6, bench/static.py's
assumed latencies and shared-memory bandwidth), B16 H512 T1024 fp16 inference forward, against today's per-layer
launches (bench.static's single-layer row, 0.82 µs/step with its polled h exchange, one direction after another,
input GEMMs and launch gaps left out):
    2 layers unidirectional   96 programs (2 layers + layer 1's projection group), 1.11 µs/step x 1026 steps
                              = 1.14 ms vs 1.69 ms: 0.67x (polled: no counter; 1.57 µs/step through them)
    2 layers bidirectional   128 programs, 0.98 µs/step x 2048 steps, each of layer 0's at the pace of the input
                             projection beside it (1.13 µs) = 2.20 ms vs 3.38 ms: 0.65x (polled; 0.95x through
                             the counters)
(the target is ≤ 0.6x: 0.59x against the single layer through its step counter, 1.33 µs/step. The fused products (``_fused``: the recurrence's h·W_hhᵀ and the projections' x·W_ihᵀ,
one tensor-core product per piece of K for the four gates) run transposed where K ≤ 512, a warpgroup MMA that
reads W from shared memory once per warpgroup: 1.76 → 1.57 µs/step. Before: 0.61x with the serial load rounds
counted but not shared memory; 0.74x and 0.90x until H became a constant, the layers ≥ 1 got their input
projected ahead (program pairs splitting the rows, bidirectional), gates_x came as 32-bit words and h through
exchange slots. Where the time goes: the synchronisation (0.50 µs), the L2 bytes of every group running at once
(1.8 MB a step unidirectional) and shared memory (W re-read every step).) Since (modeled, CPI fitted, not yet run on
a GPU): 8 warps, and the recurrence's product with K folded into M, W_hh in registers (FH, kernels/triton_lstm.py's
``_load_w_folded``), where BLOCK_H ≥ 32: B16 H512 fp16 2 layers 2.63 -> 1.76 µs a step unidirectional, 2.43 ->
1.52 bidirectional.
Training (forward saving gates and cells, then backward, both polled): 0.72x (uni) / 0.71x (bi), backward steps
of 2.63 / 2.24 µs (every program reads its group's whole dz, two or three groups at a time: 5-7 MB a step); the
four gates' dz loads go out together (``_dz_rows``): gate by gate they were four serial L2 rounds a step.
Forward and backward compile without spills in the time loops (triton 3.6; every stack that fits 132 SMs, H 128-512,
2-4 layers, B 1 / 5 / 16, fp16 and bf16; the bidirectional forward's projection loop reloads 2 loop invariants
at H = 512), 80 / 128 KB (unidirectional forward / backward) and 144 / 192 KB (bidirectional) of shared memory.
Known risks: (1) all programs of all groups must be co-resident (cooperative launch: the driver refuses rather
than hangs); (2) the waits are the epoch counters of kernels/triton_barrier.py read across groups: correct by
the same release/acquire argument, but only a GPU tests memory ordering (forward and backward poll written-once
data instead, ``_unwritten``: it needs no ordering between elements, only that a 16-bit store is single-copy
atomic; the forward holds an [L·D, T+1, B, H] ring of h, as much memory as y; a counter wait is left once per
launch); (3) fp16/bf16 exchange dz between
programs in 16 bits (as the tensor cores read it; the saved dz for the weight GEMMs stays fp32); (4) the shared-memory
rule is an estimate checked against the sm_90 compile of the modeled shapes only.

Dimension legend
    T time steps   B batch   H hidden units   L layers   D directions (1, 2)   G = 4H gates (i, f, g, o)
    HT hidden units per program         NPG programs per (layer, direction) group = cdiv(H, HT)
    BLOCK_H  H padded to a power of two: one segment of every reduction (k = seg·BLOCK_H + j, j < H real)

The equations, for layer l, direction d (layer 0's x·W_ihᵀ for all steps and both directions is ONE GEMM
outside; layers ≥ 1 compute theirs in the kernel, step by step, from the layer below's output):

    x_t   = y_{l-1}[t] (both directions, D·H wide), dropped out: x_t ⊙ m / (1 - p) in training
    z_t   = x_t · W_ihᵀ + b + h_{t-1} · W_hhᵀ          i, f, o = σ(z_i, z_f, z_o)   g = tanh(z_g)
    c_t   = f ⊙ c_{t-1} + i ⊙ g                        h_t = o ⊙ tanh(c_t)       y_l[t, :, dH:(d+1)H] = h_t

    backward, walking each direction's time the other way (dh, dc carried from dh_n, dc_n):
    dy_t  = dY[t] (top layer)  or  (dz_{l+1}[t] · W_ih(l+1))[:, own columns] ⊙ m / (1 - p)   (in the kernel)
    dh_t  = dh + dy_t          dc_t = dc + dh_t ⊙ o ⊙ (1 - tanh²c_t)
    dz    = (dc_t ⊙ g ⊙ i(1-i), dc_t ⊙ c_{t-1} ⊙ f(1-f), dc_t ⊙ i ⊙ (1-g²), dh_t ⊙ tanh c_t ⊙ o(1-o))
    dh ← dz_t · W_hh          dc ← dc_t ⊙ f            (weight gradients: GEMMs afterwards, lstm_gpu/stack.py)

The schedule. Programs are split among the (layer, direction) groups, layer-major; a program owns HT units of its
group in all four gates (as in kernels/triton_lstm.py). Each group counts its programs' finished steps on its own
epoch counter (kernels/triton_barrier.py's algorithm: arrive = atomic add with release, wait = acquire polls until
the count is reached; the unidirectional forward polls the data instead, ``_unwritten``, reading the same
things at the same steps). A program waits only for what it reads:
    its own group at the previous step        counter(l, d) ≥ NPG·s              (h_{t-1}; backward dz_{t±1})
    the layer below at the same t (forward)   counter(l-1, fwd) ≥ NPG·(t+1),  counter(l-1, rev) ≥ NPG·(T-t)
    the layer above at the same t (backward)  counter(l+1, fwd) ≥ NPG·(T-t),  counter(l+1, rev) ≥ NPG·(t+1)
Unidirectional, that is a wavefront: layer l runs step t while layer l+1 runs step t-1, and the stack takes
T + L - 1 steps instead of L·T. Where the SMs allow (config ``proj_groups``), a projection group per layer
l ≥ 1 computes x_t·W_ihᵀ + b for it as soon as the layer below has h_t (counter(l-1) ≥ NPG·(t+1)) and layer
l reads it as layer 0 reads its gates_x (counter(proj l) ≥ NPG·(t+2), its prefetch of t+1 included): a stage
per layer, T + 2(L-1) steps, each a single reduction. Bidirectional, the same rule gives: the two directions of a layer side by side,
layer l+1 starting when the layer below has finished (its forward direction needs the reverse direction's
t = 0, which comes last; its reverse direction needs the forward's t = T-1, which comes last too): L·T steps
instead of today's 2·L·T (directions one after another), with no launch and no GEMM between the layers. No
schedule can start layer l+1 earlier: every one of its steps reads both directions of layer l at that t. So its
programs, idle until then, project its whole input meanwhile (forward, PRE_X): x_t·W_ihᵀ + b for time t once
both directions below have it (counter(l-1, fwd) ≥ NPG·k and counter(l-1, rev) ≥ NPG·k with k = max(t+1, T-t)),
or, with an even number of programs, in program pairs that split each row in its two halves, one per direction
below, each half as soon as that direction has it, for twice the units (every row read half as often); then
one arrival each, and the recurrence reads the result like layer 0's gates_x (its waits count that arrival),
with no x·W_ihᵀ in its steps and no wait for the layer below. Every slot is written once (y, dz are [L, T, ...]),
so no wait guards a reuse.
The backward mirrors it: dy_t of a layer below the top is dz_{l+1}[t]·W_ih(l+1) (own columns), and the same two
levers take it out of the layer's step: unidirectional, the projection groups compute it as soon as the layer
above has dz_t (counter(l+1) ≥ NPG·(T-t)) and the layer waits, once per step, for its own group and the
projection of its next step's dy; bidirectional (PRE_DY), a layer's programs project its whole dy while the
layer above runs (t once both directions above have dz_t; program pairs by direction above), arrive once, and
their steps wait for their own group only. The saved gates and cells of the next step are loaded between the
arrival and the wait.
On CPU, with one program per group, the interpreter runs the programs one by one in program-id order: forward
numbers the groups from the bottom layer up, backward from the top layer down, so each program only waits for
groups that ran before it (or for itself) and the sequential run completes.

Layers (fla-org layout): 1. the kernels; 2. the launchers ``stack_fwd`` / ``stack_bwd`` (check, allocate, launch);
3./4. the autograd tie, the weight GEMMs and the function the module calls: lstm_gpu/stack.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import host, triton_lstm
from .triton_barrier import barrier_state, barrier_timeout, raise_if_timed_out
from .triton_lstm import (_chunk_sum, _dot, _fold_rows, _folded_gates, _fused_gates, _hw, _load_w_folded, _opaque_zero,
                          _sigmoid, _tanh, _tile_rows)
from .triton_config import fold_pieces, fused_pieces, transposed_gates
from .triton_stack_config import StackConfig, gpu_config, interpreter_config, recurrence_fold

__all__ = ["stack_fwd", "stack_bwd", "choose_config"]


# ----------------------------------------------------------------------------------------------------
# 1. Kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _arrive(p_cnt):
    """This program finished a step of its group: one release add on the group's counter."""
    tl.debug_barrier()                                  # every thread's stores precede the release
    tl.atomic_add(p_cnt, 1, sem="release", scope="gpu")


@triton.jit
def _wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT: tl.constexpr):
    """Wait until the counters of groups g_a, g_b, g_c (p_bar[2g]; time-out flag p_bar[2g + 1]) reach n_a, n_b,
    n_c arrivals. One vector of polls (a lane each), so a wait whose counts are already there costs one L2 round
    trip: three scalar polls compiled to three round trips in a row on sm_90 (each result is broadcast through
    shared memory and a bar.sync before the next poll is issued). TIMEOUT > 0 (debug mode,
    LSTM_GPU_BARRIER_TIMEOUT): give up after that many polls and set g_a's flag."""
    lane = tl.arange(0, 4)
    p = p_bar + 2 * tl.where(lane == 0, g_a, tl.where(lane == 1, g_b, g_c))
    n = tl.where(lane == 0, n_a, tl.where(lane == 1, n_b, n_c)).to(tl.int64)
    behind = 1                                          # poll at least once: one round trip when already there
    if TIMEOUT > 0:
        failed = tl.atomic_add(p_bar + 2 * g_a + 1, 0, sem="relaxed", scope="gpu")
        spins = 0
        while (behind > 0) & (failed == 0):
            behind = tl.max((tl.atomic_add(p, 0, sem="acquire", scope="gpu") < n).to(tl.int32), 0)
            spins += 1
            failed = tl.where(spins >= TIMEOUT, 1, failed)
        if spins >= TIMEOUT:
            tl.atomic_xchg(p_bar + 2 * g_a + 1, 1, sem="relaxed", scope="gpu")
    else:
        while behind > 0:
            behind = tl.max((tl.atomic_add(p, 0, sem="acquire", scope="gpu") < n).to(tl.int32), 0)
    tl.debug_barrier()                                  # no thread reads before the acquires completed


@triton.jit
def _seg(k, H, S, BLOCK_H: tl.constexpr):
    """Reduction index k = seg·BLOCK_H + j → (its element offset seg·S + j, real: j < H). The segments are the
    H-wide pieces a reduction runs over, S apart: S = H for the two directions of an input row; S = 4H for one
    gate of both directions in a row of dz."""
    j = k % BLOCK_H
    return (k // BLOCK_H) * S + j, j < H


@triton.jit
def _rows(p, o_row, m_row, H, S, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr,
          VOL: tl.constexpr = False):
    """The left operand of a reduction over K = NSEG·BLOCK_H: row r's element k at p + o_row[r] + seg·S + j, as
    [BB, K], or [SPLIT, BB, K/SPLIT] for SPLIT independent tl.dot chunks. Written by other programs: .cg (L2), or
    VOL (a try of a poll, ``_poll_rows``): volatile, so the compiler keeps every one."""
    if SPLIT == 1:
        k = tl.arange(0, K)[None, :]
        o_row, m_row = o_row[:, None], m_row[:, None]
    else:
        KC: tl.constexpr = K // SPLIT
        k = tl.arange(0, SPLIT)[:, None, None] * KC + tl.arange(0, KC)[None, None, :]
        o_row, m_row = o_row[None, :, None], m_row[None, :, None]
    o_k, m_k = _seg(k, H, S, BLOCK_H)
    if VOL:
        return tl.load(p + o_row + o_k, mask=m_row & m_k, other=0., volatile=True)
    return tl.load(p + o_row + o_k, mask=m_row & m_k, other=0., cache_modifier=".cg")


@triton.jit
def _w(p, s_k, s_u, on, i_p, H, S, HT: tl.constexpr, K: tl.constexpr, BLOCK_H: tl.constexpr,
       SPLIT: tl.constexpr, USE_DOT: tl.constexpr, ACC: tl.constexpr):
    """A weight block for this program's units u, loaded once and kept on chip: element (k, u) at
    p + (seg·S + j)·s_k + u·s_u; zeros where ``on`` is false. tl.dot: [K, HT] or [SPLIT, K/SPLIT, HT] in the
    weights' dtype; broadcast path: [HT, K] upcast to the accumulation dtype (``_hw``'s layouts)."""
    o_u = i_p * HT + tl.arange(0, HT)
    if USE_DOT and SPLIT > 1:
        KC: tl.constexpr = K // SPLIT
        k = tl.arange(0, SPLIT)[:, None, None] * KC + tl.arange(0, KC)[None, :, None]
        u = o_u[None, None, :]
    elif USE_DOT:
        k = tl.arange(0, K)[:, None]
        u = o_u[None, :]
    else:
        k = tl.arange(0, K)[None, :]
        u = o_u[:, None]
    o_k, m_k = _seg(k, H, S, BLOCK_H)
    b_w = tl.load(p + o_k * s_k + u * s_u, mask=tl.where(on, m_k & (u < H), False), other=0.)
    return b_w if USE_DOT else b_w.to(ACC)


@triton.jit
def _w_fused(p, s_u, on, i_p, H, S, HT: tl.constexpr, K0, KC: tl.constexpr, BLOCK_H: tl.constexpr):
    """Forward, tensor cores: the rows of the four gates for this program's units side by side, piece
    k = K0 … K0 + KC - 1 of the reduction: [KC, 4·HT], column 4u + gate, element (k, 4u + gate) at
    p + (gate·H + u)·s_u + seg·S + j (kernels/triton_lstm.py's ``_load_w_fused``; zeros where ``on`` is false)."""
    o_c = tl.arange(0, 4 * HT)
    u = i_p * HT + o_c // 4
    o_k, m_k = _seg(K0 + tl.arange(0, KC)[:, None], H, S, BLOCK_H)
    return tl.load(p + o_k + ((o_c % 4) * H + u)[None, :] * s_u, mask=tl.where(on, m_k & (u < H)[None, :], False),
                   other=0.)


@triton.jit
def _w4(p, s_u, on, i_p, H, S, HT: tl.constexpr, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr,
        KC: tl.constexpr, PIECES: tl.constexpr, USE_DOT: tl.constexpr, ACC: tl.constexpr):
    """The four weight blocks of a reduction over K for this program's units, loaded once: on the tensor cores
    the fused pieces (``_w_fused``: PIECES of KC, the unused ones repeat the first), else gate by gate (``_w``,
    gate g's rows at p + g·H·s_u)."""
    if USE_DOT:
        b_0 = _w_fused(p, s_u, on, i_p, H, S, HT, 0, KC, BLOCK_H)
        b_1 = _w_fused(p, s_u, on, i_p, H, S, HT, KC, KC, BLOCK_H) if PIECES > 1 else b_0
        b_2 = _w_fused(p, s_u, on, i_p, H, S, HT, 2 * KC, KC, BLOCK_H) if PIECES > 2 else b_0
        b_3 = _w_fused(p, s_u, on, i_p, H, S, HT, 3 * KC, KC, BLOCK_H) if PIECES > 3 else b_0
    else:
        b_0 = _w(p, 1, s_u, on, i_p, H, S, HT, K, BLOCK_H, SPLIT, USE_DOT, ACC)
        b_1 = _w(p + H * s_u, 1, s_u, on, i_p, H, S, HT, K, BLOCK_H, SPLIT, USE_DOT, ACC)
        b_2 = _w(p + 2 * H * s_u, 1, s_u, on, i_p, H, S, HT, K, BLOCK_H, SPLIT, USE_DOT, ACC)
        b_3 = _w(p + 3 * H * s_u, 1, s_u, on, i_p, H, S, HT, K, BLOCK_H, SPLIT, USE_DOT, ACC)
    return b_0, b_1, b_2, b_3


@triton.jit
def _rows_at(p, o_row, m_row, H, S, K0, KC: tl.constexpr, BLOCK_H: tl.constexpr, VOL: tl.constexpr = False):
    """Piece k = K0 … K0 + KC - 1 of ``_rows``'s left operand: [BB, KC] (K0 a scalar, or one start per row:
    [BB, 1], K folded into M). Written by other programs: .cg (L2), or VOL volatile (``_rows``)."""
    o_k, m_k = _seg(K0 + tl.arange(0, KC)[None, :], H, S, BLOCK_H)
    if VOL:
        return tl.load(p + o_row[:, None] + o_k, mask=m_row[:, None] & m_k, other=0., volatile=True)
    return tl.load(p + o_row[:, None] + o_k, mask=m_row[:, None] & m_k, other=0., cache_modifier=".cg")


@triton.jit
def _pieces(p, o_row, m_row, H, S, KC: tl.constexpr, BLOCK_H: tl.constexpr, PIECES: tl.constexpr,
            VOL: tl.constexpr, k0=0):
    """The PIECES pieces of KC of ``_rows``'s left operand from k0 on (kernels/triton_lstm.py's ``_fold_rows``:
    one start per row where K is folded into M), every load issued before any is used (the unused ones repeat
    the first)."""
    b_a0 = _rows_at(p, o_row, m_row, H, S, k0, KC, BLOCK_H, VOL)
    b_a1 = _rows_at(p, o_row, m_row, H, S, k0 + KC, KC, BLOCK_H, VOL) if PIECES > 1 else b_a0
    b_a2 = _rows_at(p, o_row, m_row, H, S, k0 + 2 * KC, KC, BLOCK_H, VOL) if PIECES > 2 else b_a0
    b_a3 = _rows_at(p, o_row, m_row, H, S, k0 + 3 * KC, KC, BLOCK_H, VOL) if PIECES > 3 else b_a0
    return b_a0, b_a1, b_a2, b_a3


# The polled forward and backward (``POLLED``: the stack's default). Every tensor one program writes and another
# reads (forward: the own group's h, the layer below's output, a projection's gates_x; backward: the own group's
# dz, the layer above's dz, a projection group's dy) is written ONCE, into
# memory the launcher filled with UNWRITTEN (the bits of -0.0: the least integer of the dtype's width); a writer
# stores a -0.0 as +0.0 (``_canon``: no product or sum tells them apart), and a reader reloads what it reads until
# no element is UNWRITTEN. A store of one element is single-copy atomic, so an element read is either UNWRITTEN
# or final: no counter, no fence, no arrival, and a wait is the load it needs anyway (kernels/triton_lstm.py's
# polled h exchange, the stack's every read). What stays a counter is a wait once per launch: a bidirectional
# layer's projection of its whole input (forward) or dy (backward) complete before its recurrence, and a
# unidirectional layer's first dy from its projection group (backward; polled before the time loop, the poll
# crashed triton 3.6's layout pass).

@triton.jit
def _canon(b):
    """b with -0.0 as +0.0, so a written element never reads as UNWRITTEN."""
    return tl.where(b == 0, tl.zeros_like(b), b)


@triton.jit
def _marks(b):
    """b as integers whose least value of the width (``_unwritten``) marks an UNWRITTEN element: its bits, or for
    16-bit values read as 32-bit words (int32, ``_load_gx``'s WORDS), two each, the lower of its two halves."""
    if b.dtype == tl.int32:
        return tl.minimum(b << 16, b & -65536)
    W: tl.constexpr = b.dtype.primitive_bitwidth
    if W == 16:
        return b.to(tl.int16, bitcast=True)
    elif W == 32:
        return b.to(tl.int32, bitcast=True)
    else:
        return b.to(tl.int64, bitcast=True)


@triton.jit
def _unwritten(m):
    """Whether any of the marks m (``_marks``) is UNWRITTEN."""
    W: tl.constexpr = m.dtype.primitive_bitwidth
    if W == 16:
        return tl.min(m) == -32768
    elif W == 32:
        return tl.min(m) == -2147483648
    else:
        return tl.max((m == (-9223372036854775807 - 1)).to(tl.int32)) > 0


@triton.jit
def _unwritten4(b0, b1, b2, b3, PIECES: tl.constexpr):
    """Whether any element of the PIECES tiles (one shape) is UNWRITTEN: their marks' elementwise minimum, then
    ONE reduction across the program (one reduction per tile: a shared-memory round and a block barrier each,
    8 a step in the unidirectional stack forward's loop, 199 of its 863 instructions, sm_90, triton 3.6)."""
    m = _marks(b0)
    if PIECES > 1:
        m = tl.minimum(m, _marks(b1))
    if PIECES > 2:
        m = tl.minimum(m, _marks(b2))
    if PIECES > 3:
        m = tl.minimum(m, _marks(b3))
    return _unwritten(m)


@triton.jit
def _given_up(p_flag, spins, TIMEOUT: tl.constexpr):
    """Debug mode (TIMEOUT > 0): whether a poll has tried TIMEOUT times, or another has given up (its flag)."""
    failed = tl.atomic_add(p_flag, 0, sem="relaxed", scope="gpu") != 0    # a bool: the flag is int64, a literal
    if spins >= TIMEOUT:                                                 # 1 int32 (sm_90 compile refused the mix)
        tl.atomic_xchg(p_flag, 1, sem="relaxed", scope="gpu")
        failed = True
    return failed


@triton.jit
def _poll_pieces(p, o_row, m_row, H, S, KC: tl.constexpr, BLOCK_H: tl.constexpr, PIECES: tl.constexpr, p_flag,
                 TIMEOUT: tl.constexpr):
    """``_pieces`` polled: reloaded until none is UNWRITTEN (TIMEOUT > 0: or the poll gives up). 16-bit values are
    read as int16 (their marks as loaded, ``_marks``) and bitcast back after the poll."""
    X: tl.constexpr = p.dtype.element_ty
    if X.primitive_bitwidth == 16:
        p = p.to(tl.pointer_type(tl.int16))
    b_a0, b_a1, b_a2, b_a3 = _pieces(p, o_row, m_row, H, S, KC, BLOCK_H, PIECES, True)
    late = _unwritten4(b_a0, b_a1, b_a2, b_a3, PIECES)
    spins = 0
    while late:
        b_a0, b_a1, b_a2, b_a3 = _pieces(p, o_row, m_row, H, S, KC, BLOCK_H, PIECES, True)
        late = _unwritten4(b_a0, b_a1, b_a2, b_a3, PIECES)
        if TIMEOUT > 0:
            spins += 1
            late = late & ~_given_up(p_flag, spins, TIMEOUT)   # given up: invalid, the launcher raises
    return b_a0.to(X, bitcast=True), b_a1.to(X, bitcast=True), b_a2.to(X, bitcast=True), b_a3.to(X, bitcast=True)


@triton.jit
def _poll_rows(p, o_row, m_row, H, S, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, p_flag,
               TIMEOUT: tl.constexpr):
    """``_rows`` polled: reloaded until none is UNWRITTEN (TIMEOUT > 0: or the poll gives up)."""
    b = _rows(p, o_row, m_row, H, S, K, BLOCK_H, SPLIT, True)
    late = _unwritten(_marks(b))
    spins = 0
    while late:
        b = _rows(p, o_row, m_row, H, S, K, BLOCK_H, SPLIT, True)
        late = _unwritten(_marks(b))
        if TIMEOUT > 0:
            spins += 1
            late = late & ~_given_up(p_flag, spins, TIMEOUT)   # given up: invalid, the launcher raises
    return b


@triton.jit
def _fused(p, o_row, m_row, H, S, KC: tl.constexpr, BLOCK_H: tl.constexpr, PIECES: tl.constexpr, b_w0, b_w1, b_w2,
           b_w3, b_zero, PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr, POLL: tl.constexpr, p_flag,
           TIMEOUT: tl.constexpr, k0=0, FOLD: tl.constexpr = 1):
    """The four gates of a reduction in one tensor-core product per piece of K (b_w0 … b_w3: ``_w_fused``'s
    pieces), each piece its own accumulator, every piece's load issued before the first product (one L2
    round), then split into the gates: i, f, g, o as [BB, HT] (kernels/triton_lstm.py's ``_h_w_fused`` has
    the measured reasons). TRANSPOSED: computed as [4·HT, BB] = W · aᵀ, a warpgroup MMA on Hopper that reads W
    from shared memory once per warpgroup instead of once per warp (B16 H512 2-layer stack step 1.76 -> 1.57
    µs modeled, triton 3.6), where K ≤ 512 (``_fused_pieces``). POLL: the left operand polled (``_poll_pieces``)."""
    if POLL:
        b_a0, b_a1, b_a2, b_a3 = _poll_pieces(p, o_row, m_row, H, S, KC, BLOCK_H, PIECES, p_flag, TIMEOUT)
    else:
        b_a0, b_a1, b_a2, b_a3 = _pieces(p, o_row, m_row, H, S, KC, BLOCK_H, PIECES, False, k0)
    if FOLD > 1:        # K folded into M, the weights in registers (kernels/triton_lstm.py, ``_folded_gates``)
        b_i, b_f, b_g, b_o = _folded_gates(b_a0, b_a1, b_a2, b_a3, b_w0, b_w1, b_w2, b_w3, PIECES)
    else:
        b_i, b_f, b_g, b_o = _fused_gates(b_a0, b_a1, b_a2, b_a3, b_w0, b_w1, b_w2, b_w3, b_zero, PIECES, PRECISION,
                                          TRANSPOSED)
    return b_i, b_f, b_g, b_o


@triton.jit
def _keep(o_y, seed, drop):
    """The dropout mask of layer output elements at offsets o_y of y ([L, T, B, D·H]): kept with probability
    1 - drop. Counter-based (Philox on the element's offset), so backward regenerates the same mask."""
    return tl.rand(seed, o_y.to(tl.int32)) >= drop


@triton.jit
def _load_gx(p_gx, p_gxu, t, i_l, i_d, o_b, o_u, m_bu, T, B, H: tl.constexpr, D: tl.constexpr, GXU: tl.constexpr,
             WORDS: tl.constexpr, PART: tl.constexpr = 0, HALVES: tl.constexpr = 1, VOL: tl.constexpr = False):
    """gates_x[t] = x_t·W_ihᵀ + b for own units, the four gates: layer 0's from the GEMM outside (p_gx) and, GXU, a
    layer ≥ 1's from what it (bidirectional) or its projection group (unidirectional) projected (p_gxu:
    [L-1, HALVES, T, B, D·4H]: HALVES = 2, the layer's gates_x is the sum of PART 0 and 1; layer 0 has no PART 1);
    zeros for a layer ≥ 1 without GXU (it adds x_t·W_ihᵀ in its loop) and for a t outside
    0 … T-1 (the prefetch after the last step). The loop issues it for the next step after its arrival and before
    its wait, whose round trip its latency overlaps, and ``_unpack_gx`` converts it after the wait. WORDS (16-bit,
    H even): loaded as 32-bit words, two units each ([BB, HT/2]): loaded as 16-bit values, sm_90 repacked the
    halves right after the load, so the program waited for the load there, before its poll (modeled 0.14 µs a
    step, B16 H512 fp16, triton 3.6). .cg: a projection group (another SM) may have just written it; VOL: volatile,
    a try of the polled forward's poll."""
    if GXU:
        p_gx = tl.where(i_l == 0, p_gx, p_gxu + ((i_l - 1) * HALVES + PART).to(tl.int64) * T * B * (4 * D * H))
        m_gx = tl.where((t >= 0) & (t < T), m_bu, False)
        if PART > 0:
            m_gx = tl.where(i_l > 0, m_gx, False)
    else:
        m_gx = tl.where((i_l == 0) & (t >= 0) & (t < T), m_bu, False)
    o_gx = (t.to(tl.int64) * B + o_b)[:, None] * (4 * D * H) + i_d * 4 * H + o_u[None, :]
    if WORDS:
        HT2: tl.constexpr = o_u.shape[0] // 2
        o_w = o_gx // 2
        o_w = tl.reshape(o_w, [o_b.shape[0], HT2, 2]).min(2)          # one offset per pair of units
        m_w = tl.reshape(m_gx.to(tl.int32), [o_b.shape[0], HT2, 2]).max(2) > 0
        p = p_gx.to(tl.pointer_type(tl.int32)) + o_w
        G: tl.constexpr = H // 2
    else:
        p = p_gx + o_gx
        m_w = m_gx
        G: tl.constexpr = H
    if VOL:
        return (tl.load(p, mask=m_w, other=0, volatile=True), tl.load(p + G, mask=m_w, other=0, volatile=True),
                tl.load(p + 2 * G, mask=m_w, other=0, volatile=True),
                tl.load(p + 3 * G, mask=m_w, other=0, volatile=True))
    return (tl.load(p, mask=m_w, other=0, cache_modifier=".cg"),
            tl.load(p + G, mask=m_w, other=0, cache_modifier=".cg"),
            tl.load(p + 2 * G, mask=m_w, other=0, cache_modifier=".cg"),
            tl.load(p + 3 * G, mask=m_w, other=0, cache_modifier=".cg"))


@triton.jit
def _unpack_gx(b_g, DTYPE: tl.constexpr, ACC: tl.constexpr, WORDS: tl.constexpr):
    """``_load_gx``'s values of one gate as [BB, HT] in the accumulation dtype (WORDS: unit 2j in the low half
    of word j, 2j+1 in the high half)."""
    if WORDS:
        lo = (b_g & 0xFFFF).to(tl.uint16).to(DTYPE, bitcast=True)
        hi = ((b_g >> 16) & 0xFFFF).to(tl.uint16).to(DTYPE, bitcast=True)
        b = tl.join(lo, hi)
        return tl.reshape(b, [b.shape[0], b.shape[1] * 2]).to(ACC)
    else:
        return b_g.to(ACC)


@triton.jit
def _project(p_x, p_gxu, t, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_xi, b_xf, b_xg, b_xo, b_bi, b_bf, b_bg, b_bo,
             b_zero, D: tl.constexpr, KX: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT_X: tl.constexpr,
             USE_DOT: tl.constexpr, PRECISION: tl.constexpr, KCX: tl.constexpr, PX: tl.constexpr,
             TRX: tl.constexpr, POLL: tl.constexpr, p_flag, TIMEOUT: tl.constexpr):
    """gates_x[t] = x_t · W_ihᵀ + b of a layer ≥ 1 (x_t: the layer below's output at t, both directions), own
    units, into p_gxu [L-1, T, B, D·4H] in the input dtype (as the GEMM outside writes layer 0's). Tensor cores:
    the four gates fused, PX pieces of KCX (b_xi … b_xo hold the pieces). POLL: x_t polled (the polled forward)."""
    DH = D * H
    o_t = ((i_l - 1) * T + t).to(tl.int64) * B + o_b
    if USE_DOT:
        b_ri, b_rf, b_rg, b_ro = _fused(p_x, o_t * DH, m_b, H, H, KCX, BLOCK_H, PX, b_xi, b_xf, b_xg, b_xo, b_zero,
                                        PRECISION, TRX, POLL, p_flag, TIMEOUT)
    else:
        if POLL:
            b_x = _poll_rows(p_x, o_t * DH, m_b, H, H, KX, BLOCK_H, SPLIT_X, p_flag, TIMEOUT)
        else:
            b_x = _rows(p_x, o_t * DH, m_b, H, H, KX, BLOCK_H, SPLIT_X)
        b_ri, b_rf = _hw(b_x, b_xi, USE_DOT, PRECISION), _hw(b_x, b_xf, USE_DOT, PRECISION)
        b_rg, b_ro = _hw(b_x, b_xg, USE_DOT, PRECISION), _hw(b_x, b_xo, USE_DOT, PRECISION)
    p = p_gxu + o_t[:, None] * (4 * DH) + i_d * 4 * H + o_u[None, :]
    X = p_gxu.dtype.element_ty
    tl.store(p, _canon((b_ri + b_bi).to(X)), mask=m_bu)
    tl.store(p + H, _canon((b_rf + b_bf).to(X)), mask=m_bu)
    tl.store(p + 2 * H, _canon((b_rg + b_bg).to(X)), mask=m_bu)
    tl.store(p + 3 * H, _canon((b_ro + b_bo).to(X)), mask=m_bu)


@triton.jit
def _project_half(p_x, p_gxu, t, k_h, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_xi, b_xf, b_xg, b_xo, b_zero, D: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, USE_DOT: tl.constexpr,
                  PRECISION: tl.constexpr, KCH: tl.constexpr, PH: tl.constexpr, TRH: tl.constexpr, POLL: tl.constexpr,
                  p_flag, TIMEOUT: tl.constexpr):
    """Half k_h of gates_x[t] of a bidirectional layer ≥ 1 for units o_u: the half x_t[:, k_h·H : (k_h+1)·H] of
    its input (direction k_h of the layer below) times the same columns of W_ih (+ b in half 0), into
    p_gxu [L-1, 2, T, B, D·4H] at (l-1, k_h, t); the recurrence adds the two halves (``_load_gx``) and b (held
    across this loop, ptxas kept b in local memory; loaded in it, a round of loads of its own). POLL: the half
    row polled (the polled forward)."""
    DH = D * H
    # the row's start as one scalar, the tile's offsets from it 32-bit: ptxas kept their loop-invariant parts
    # as 64-bit addresses across the loop (B16 H512 fp16 bidirectional, polled, triton 3.6: in local memory)
    p_row = p_x + k_h * H + ((i_l - 1) * T + t).to(tl.int64) * B * DH
    if USE_DOT:     # fused gates, PH pieces of KCH (b_xi … b_xo hold the pieces)
        b_ri, b_rf, b_rg, b_ro = _fused(p_row, o_b * DH, m_b, H, H, KCH, BLOCK_H, PH, b_xi, b_xf, b_xg, b_xo,
                                        b_zero, PRECISION, TRH, POLL, p_flag, TIMEOUT)
    else:
        if POLL:
            b_x = _poll_rows(p_row, o_b * DH, m_b, H, H, BLOCK_H, BLOCK_H, SPLIT, p_flag, TIMEOUT)
        else:
            b_x = _rows(p_row, o_b * DH, m_b, H, H, BLOCK_H, BLOCK_H, SPLIT)
        b_ri, b_rf = _hw(b_x, b_xi, USE_DOT, PRECISION), _hw(b_x, b_xf, USE_DOT, PRECISION)
        b_rg, b_ro = _hw(b_x, b_xg, USE_DOT, PRECISION), _hw(b_x, b_xo, USE_DOT, PRECISION)
    p = (p_gxu + (((i_l - 1) * 2 + k_h) * T + t).to(tl.int64) * B * (4 * DH)
         + (o_b[:, None] * (4 * DH) + i_d * 4 * H + o_u[None, :]))
    X = p_gxu.dtype.element_ty
    tl.store(p, _canon(b_ri.to(X)), mask=m_bu)
    tl.store(p + H, _canon(b_rf.to(X)), mask=m_bu)
    tl.store(p + 2 * H, _canon(b_rg.to(X)), mask=m_bu)
    tl.store(p + 3 * H, _canon(b_ro.to(X)), mask=m_bu)


@triton.jit
def _h_tries(p, o_row, m_row, H, KCH: tl.constexpr, BLOCK_H: tl.constexpr, PH: tl.constexpr, SPLIT_H: tl.constexpr,
             USE_DOT: tl.constexpr, k0=0):
    """One try (volatile) at h_{t-1} of the polled forward: the fused product's pieces on the tensor cores (from
    k0: ``_pieces``), else the rows as the broadcast path reads them (repeated four times)."""
    if USE_DOT:
        b_a0, b_a1, b_a2, b_a3 = _pieces(p, o_row, m_row, H, H, KCH, BLOCK_H, PH, True, k0)
    else:
        b_a0 = _rows(p, o_row, m_row, H, H, BLOCK_H, BLOCK_H, SPLIT_H, True)
        b_a1, b_a2, b_a3 = b_a0, b_a0, b_a0
    return b_a0, b_a1, b_a2, b_a3


@triton.jit(do_not_specialize=["T"])
def _stack_fwd_kernel(
    # pointers (all contiguous)
    p_gx,        # [T, B, D·4H] layer 0's x·W_ihᵀ + b_ih + b_hh, both directions (one GEMM outside)
    p_wih,       # [L-1, D, 4H, D·H] W_ih of layers 1 … L-1 (not read when L = 1)
    p_whh,       # [L, D, 4H, H]
    p_bias,      # [L-1, D, 4H] b_ih + b_hh of layers 1 … L-1 (HAS_BIAS)
    p_h0,        # [L·D, B, H]
    p_c0,        # [L·D, B, H]
    p_len,       # [B] int32
    p_y,         # [L, T, B, D·H] out: every layer's output (zero past a row's length)
    p_x,         # [L-1, T, B, D·H] out, DROPOUT: the dropped-out outputs layers 1 … read; else p_y itself
    p_hn,        # [L·D, B, H] out
    p_cn,        # [L·D, B, H] out
    p_gates,     # [L, T, B, D·4H] out (accumulation dtype, SAVE): the activated i, f, g, o
    p_cells,     # [L, T, B, D·H] out (accumulation dtype, SAVE)
    p_bar,       # [2·L·D] int64, zero: per group its counter of finished program-steps and a time-out flag
    p_seed,      # [1] int64 (DROPOUT): the mask's seed, drawn by torch's generator (a tensor: see lstm_gpu/stack.py)
    p_gxu,       # [L-1, T, B, D·4H] input dtype (PRE_X): x·W_ihᵀ + b of layers 1 … L-1, projected in the kernel
    p_hx,        # [L·D, 2, B, H]: how a group's programs exchange h, generation g in slot g % 2, h0 in slot 0;
                 # POLLED: [L·D, T+1, B, H], generation g in slot g, UNWRITTEN until written
    # sizes
    T, B, L,
    H: tl.constexpr,     # a constant: offsets inside a row become immediates (kernels/triton_lstm.py measured why)
    drop,        # dropout between layers: the probability (DROPOUT)
    # meta-parameters
    D: tl.constexpr, NPG: tl.constexpr, HT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
    FULL: tl.constexpr,         # B == BLOCK_B: the row mask is a constant (no predicated loads)
    SPLIT_H: tl.constexpr,      # tl.dot chunks of the h·W_hhᵀ reduction (K = BLOCK_H)
    SPLIT_X: tl.constexpr,      # tl.dot chunks of the x·W_ihᵀ reduction (K = D·BLOCK_H)
    KCH: tl.constexpr, PH: tl.constexpr,    # tensor cores, fused gates: h·W_hhᵀ in PH pieces of KCH (K = BLOCK_H)
    KCX: tl.constexpr, PX: tl.constexpr,    # and x·W_ihᵀ in PX pieces of KCX (K = D·BLOCK_H)
    TRH: tl.constexpr, TRX: tl.constexpr,   # those products transposed (wgmma; ``_fused``)
    FH: tl.constexpr,                       # h·W_hhᵀ with K folded into M, W_hh in registers (2; else 1)
    KCR: tl.constexpr, PR: tl.constexpr,    # h·W_hhᵀ's pieces: KCH, PH, or folded each half of K in PR of KCR
    MULTI: tl.constexpr,        # L > 1: programs of layers ≥ 1 exist
    PRE_X: tl.constexpr,        # layers ≥ 1 project their whole input before their recurrence (bidirectional)
    HALVES: tl.constexpr,       # PRE_X with NPG even: program pairs split the input row in halves (else 1)
    PIPE: tl.constexpr,         # projection groups feed the layers ≥ 1, a step ahead (unidirectional)
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, SAVE: tl.constexpr,
    DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr,
    TIMEOUT: tl.constexpr,      # polls before a wait gives up (debug mode); 0 = wait forever
    POLLED: tl.constexpr,       # every read between programs polled (no counter; see ``_canon``)
):
    pid = tl.program_id(0)
    i_p = pid % NPG                     # unit slice within the group
    if PIPE:
        # groups [layer 0, projection 1, layer 1, projection 2, …]: each projection group right before the layer
        # it feeds, so a program only waits for groups of lower ids (the interpreter runs them in id order)
        proj = (pid // NPG) % 2 == 1
        i_g = (pid // NPG + 1) // 2     # the layer (D = 1): its own, or the one it projects for
        i_pg = L + tl.maximum(i_g - 1, 0)                       # that layer's projection group (its counter)
    else:
        proj = False
        i_g = pid // NPG                # group = layer·D + direction (layer-major)
    i_l, i_d = i_g // D, i_g % D
    rev = i_d == 1
    p_flag = p_bar + 2 * i_g + 1                                # the time-out flag of this program's group
    DH = D * H
    o_b, m_b = _tile_rows(0, B, BLOCK_B, FULL)
    o_u = i_p * HT + tl.arange(0, HT)
    m_bu = m_b[:, None] & (o_u < H)[None, :]
    o_s = (i_g * B + o_b)[:, None] * H + o_u[None, :]           # own units in [L·D, B, H]
    KX: tl.constexpr = D * BLOCK_H
    # The fused products' accumulators start from zeros the compiler cannot prove (kernels/triton_lstm.py's
    # ``_opaque_zero`` says why).
    b_zero = _opaque_zero(BLOCK_B, 4 * HT, T)

    # Loaded ONCE, kept on chip: the rows of W_ih (layers ≥ 1) and W_hh for own units.
    if MULTI:
        upper = i_l > 0
        i_w = tl.maximum(i_g - D, 0)                            # (layer - 1, direction) in [L-1, D, ...]
        p_w = p_wih + i_w * 4 * H * DH
        if HALVES == 2:     # the projection's share of a program pair: 2·HT units, half the input row (k_h)
            k_h = i_p % 2
            o_u2 = (i_p // 2) * (2 * HT) + tl.arange(0, 2 * HT)
            m_bu2 = m_b[:, None] & (o_u2 < H)[None, :]
            p_w += k_h * H
            b_xi, b_xf, b_xg, b_xo = _w4(p_w, DH, upper, i_p // 2, H, H, 2 * HT, BLOCK_H, BLOCK_H, SPLIT_H, KCH, PH,
                                         USE_DOT, ACC)      # tensor cores: the fused pieces, not the gates
            # its zeros from one scalar: ``_opaque_zero``'s [BB, 8·HT] registers, held across the loop, were kept in
            # local memory (polled, B16 H512 fp16, triton 3.6: 30 accesses a step -> 22)
            b_zx = tl.zeros([BLOCK_B, 8 * HT], tl.float32) + 0. * T
        else:
            b_xi, b_xf, b_xg, b_xo = _w4(p_w, DH, upper, i_p, H, H, HT, KX, BLOCK_H, SPLIT_X, KCX, PX, USE_DOT, ACC)
        # b of own units (HALVES = 2: loaded after the projection, which leaves it to the recurrence)
        m_bias = tl.where(upper, (o_u < H) & HAS_BIAS, False)
        p_bb = p_bias + i_w * 4 * H + o_u
        if HALVES != 2:
            b_bi = tl.load(p_bb, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bf = tl.load(p_bb + H, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bg = tl.load(p_bb + 2 * H, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bo = tl.load(p_bb + 3 * H, mask=m_bias, other=0.).to(ACC)[None, :]
    if PRE_X:
        # Bidirectional: every step of a layer ≥ 1 reads both directions of the layer below at that t, so it can
        # only start once the layer below has finished. Its programs would sit idle until then: instead they
        # project the layer's whole input, x_t·W_ihᵀ + b for every t, while the layer below still runs, each t as
        # soon as both directions have it (awaited through the layer below's counters, or POLLED polled). After
        # k of its steps in each direction the layer below has t < k (forward) and t ≥ T-k (reverse), so from
        # k = T//2 + 1 on each k brings t = k-1 and t = T-k. The recurrence then reads gates_x like layer 0 (no
        # x·W_ihᵀ in its loop) and W_ih can leave the chip.
        # HALVES = 2: a program pair splits the row instead, each half as soon as its direction below has it
        # (half 0, forward: t = k-1 after k steps; half 1, reverse: t = T-k), for 2·HT units: every row is read
        # half as often (B16 H512: 1 MB of L2 reads per step of the layer below instead of 4.2 MB per step over
        # its last T/2), and the recurrence adds the two halves and b.
        # Then one arrival: the layer's gates_x is written (by other programs too, HALVES = 2), so its
        # recurrence waits for one arrival more than its steps (POLLED: the one count it waits for).
        if upper:
            i_below = i_g - i_d - D                             # group (l-1, forward)
            b0 = NPG * (i_l > 1).to(tl.int32)                   # a layer ≥ 1 below arrived once before its steps
            if HALVES == 2:
                for k in tl.range(1, T + 1, num_stages=1):
                    if not POLLED:
                        _wait(p_bar, i_g, 0, i_below + k_h, b0 + NPG * k, i_below + k_h, 0, TIMEOUT)
                    _project_half(p_x, p_gxu, tl.where(k_h == 0, k - 1, T - k), k_h, i_l, i_d, o_b, m_b, o_u2,
                                  m_bu2, T, B, H, b_xi, b_xf, b_xg, b_xo, b_zx, D, BLOCK_H,
                                  SPLIT_H, USE_DOT, PRECISION, KCH, PH, TRH, POLLED, p_flag, TIMEOUT)
            else:
                for k in tl.range(T // 2 + 1, T + 1, num_stages=1):
                    if not POLLED:
                        _wait(p_bar, i_g, 0, i_below, b0 + NPG * k, i_below + 1, b0 + NPG * k, TIMEOUT)
                    _project(p_x, p_gxu, k - 1, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_xi, b_xf, b_xg, b_xo,
                             b_bi, b_bf, b_bg, b_bo, b_zero, D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, KCX, PX, TRX,
                             POLLED, p_flag, TIMEOUT)
                    _project(p_x, p_gxu, T - k, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_xi, b_xf, b_xg, b_xo,
                             b_bi, b_bf, b_bg, b_bo, b_zero, D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, KCX, PX, TRX,
                             POLLED, p_flag, TIMEOUT)
            _arrive(p_bar + 2 * i_g)
            _wait(p_bar, i_g, NPG, i_g, 0, i_g, 0, TIMEOUT)    # before the first prefetch of gates_x
        if HALVES == 2:
            b_bi = tl.load(p_bb, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bf = tl.load(p_bb + H, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bg = tl.load(p_bb + 2 * H, mask=m_bias, other=0.).to(ACC)[None, :]
            b_bo = tl.load(p_bb + 3 * H, mask=m_bias, other=0.).to(ACC)[None, :]
        off = upper.to(tl.int32)                                # arrivals before the recurrence's steps
    else:
        off = 0
    if PIPE:
        # Unidirectional: a projection group per layer ≥ 1 computes its x_t·W_ihᵀ + b as soon as the layer below
        # has h_t, a step ahead of the layer, whose step then has one reduction, h·W_hhᵀ, as layer 0's: the
        # wavefront gets a stage per layer (T + 2(L-1) steps) and its slowest step is a single layer's.
        # The group's own previous step is awaited too (one poll either way): the group moves in lockstep, so its
        # counter at NPG·k means "all of it done with k steps"; without it one program could run two steps ahead of
        # a partner and bring the count to NPG alone (caught on CPU with one projection program held back).
        for t in tl.range(tl.where(proj, T, 0), num_stages=1):
            if not POLLED:
                _wait(p_bar, i_pg, NPG * t, i_g - 1, NPG * (t + 1), i_g - 1, 0, TIMEOUT)
            _project(p_x, p_gxu, t, i_l, 0, o_b, m_b, o_u, m_bu, T, B, H, b_xi, b_xf, b_xg, b_xo, b_bi, b_bf, b_bg,
                     b_bo, b_zero, D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, KCX, PX, TRX, POLLED,
                     p_bar + 2 * i_pg + 1, TIMEOUT)
            if not POLLED:
                _arrive(p_bar + 2 * i_pg)
        # a layer ≥ 1 prefetches its first gates_x before its loop: its projection group done with t = 0
        if not POLLED:
            _wait(p_bar, i_g, 0, i_pg, tl.where(upper & ~proj, NPG, 0), i_pg, 0, TIMEOUT)
    p_w = p_whh + i_g * 4 * H * H
    if FH > 1:      # K folded into M: the PR pieces of each half of K in registers (kernels/triton_lstm.py)
        b_hi = _load_w_folded(p_w, i_p, H, 0, HT, KCR, PR * KCR, FH)
        b_hf = _load_w_folded(p_w, i_p, H, KCR, HT, KCR, PR * KCR, FH) if PR > 1 else b_hi
        b_hg = _load_w_folded(p_w, i_p, H, 2 * KCR, HT, KCR, PR * KCR, FH) if PR > 2 else b_hi
        b_ho = _load_w_folded(p_w, i_p, H, 3 * KCR, HT, KCR, PR * KCR, FH) if PR > 3 else b_hi
    else:
        b_hi, b_hf, b_hg, b_ho = _w4(p_w, H, True, i_p, H, H, HT, BLOCK_H, BLOCK_H, SPLIT_H, KCR, PR, USE_DOT,
                                     ACC)      # tensor cores: the fused pieces, not the gates
    o_hr, m_hr, k_hr = _fold_rows(o_b, m_b, H, PR * KCR, FH)   # the rows of h the product reads (FH: both halves)

    b_c = tl.load(p_c0 + o_s, mask=m_bu, other=0.).to(ACC)
    b_hc = tl.load(p_h0 + o_s, mask=m_bu, other=0.)            # the carried h (frozen past a row's end)
    if POLLED:                                                  # this group's ring: a slot per generation
        p_hxg = p_hx + tl.cast(i_g, tl.int64) * (T + 1) * B * H
    else:                                                       # this group's two exchange slots
        p_hxg = p_hx + i_g * 2 * B * H
    b_len = tl.load(p_len + o_b, mask=m_b, other=0)
    seed = tl.load(p_seed) if DROPOUT else 0
    WORDS: tl.constexpr = (H % 2 == 0) and (p_gx.dtype.element_ty.primitive_bitwidth == 16)
    b_gi, b_gf, b_gg, b_go = _load_gx(p_gx, p_gxu, tl.where(rev, T - 1, 0), i_l, i_d, o_b, o_u, m_bu, T, B, H, D,
                                      PRE_X or PIPE, WORDS, 0, HALVES)
    if HALVES == 2:
        b_hi2, b_hf2, b_hg2, b_ho2 = _load_gx(p_gx, p_gxu, tl.where(rev, T - 1, 0), i_l, i_d, o_b, o_u, m_bu, T, B, H,
                                              D, PRE_X, WORDS, 1, HALVES)
    for s in tl.range(tl.where(proj, 0, T), num_stages=1):     # num_stages=1: no load hoisted above a wait
        t = tl.where(rev, T - 1 - s, s)
        o_t = ((i_l * T + t).to(tl.int64) * B + o_b)            # row (l, t, b) of y, gates, cells
        # One wait for what this step reads: its own group done with the previous step (h_{t-1}) and, layers ≥ 1,
        # the layer below done with step t: its forward direction after t+1 of its steps, its reverse direction
        # after T-t (layer 0, or PRE_X, which waited for all of it: targets 0, met at once). Then the loads of h
        # and x go out together.
        if POLLED:
            # h_{t-1}: slot s of the ring (h0 in slot 0, written by the launcher), polled with this step's gates_x
            # (a layer ≥ 1's, written by its projection) in one loop: one round trip when all is there.
            p_hs = p_hxg + tl.cast(s, tl.int64) * B * H
            HX: tl.constexpr = p_hxg.dtype.element_ty
            if HX.primitive_bitwidth == 16:     # read as int16, its marks as loaded (``_marks``), bitcast for the
                p_hs = p_hs.to(tl.pointer_type(tl.int16))   # product: 822 -> 759 instructions a step (B16 H512 fp16,
                # 2 layers, sm_90, triton 3.6; the halves of fp16 tiles were each moved out with a PRMT)
            b_a0, b_a1, b_a2, b_a3 = _h_tries(p_hs, o_hr, m_hr, H, KCR, BLOCK_H, PR, SPLIT_H, USE_DOT, k_hr)
            gx_polled = (i_l > 0) & PIPE     # a projection group's gates_x, written a step ahead
            spins = 0
            late = _unwritten4(b_a0, b_a1, b_a2, b_a3, PR if USE_DOT else 1) | (gx_polled & _unwritten4(
                b_gi, b_gf, b_gg, b_go, 4))
            while late:
                b_a0, b_a1, b_a2, b_a3 = _h_tries(p_hs, o_hr, m_hr, H, KCR, BLOCK_H, PR, SPLIT_H, USE_DOT, k_hr)
                if PIPE:
                    b_gi, b_gf, b_gg, b_go = _load_gx(p_gx, p_gxu, t, i_l, i_d, o_b, o_u, m_bu, T, B, H, D, True, WORDS,
                                                      0, 1, True)
                late = _unwritten4(b_a0, b_a1, b_a2, b_a3, PR if USE_DOT else 1) | (gx_polled & _unwritten4(
                    b_gi, b_gf, b_gg, b_go, 4))
                if TIMEOUT > 0:
                    spins += 1
                    late = late & ~_given_up(p_flag, spins, TIMEOUT)   # given up: invalid, the launcher raises
            if HX.primitive_bitwidth == 16:
                b_a0, b_a1 = b_a0.to(HX, bitcast=True), b_a1.to(HX, bitcast=True)
                b_a2, b_a3 = b_a2.to(HX, bitcast=True), b_a3.to(HX, bitcast=True)
            if USE_DOT and FH > 1:
                b_ri, b_rf, b_rg, b_ro = _folded_gates(b_a0, b_a1, b_a2, b_a3, b_hi, b_hf, b_hg, b_ho, PR)
            elif USE_DOT:
                b_ri, b_rf, b_rg, b_ro = _fused_gates(b_a0, b_a1, b_a2, b_a3, b_hi, b_hf, b_hg, b_ho, b_zero, PR,
                                                      PRECISION, TRH)
            else:
                b_ri, b_rf = _hw(b_a0, b_hi, USE_DOT, PRECISION), _hw(b_a0, b_hf, USE_DOT, PRECISION)
                b_rg, b_ro = _hw(b_a0, b_hg, USE_DOT, PRECISION), _hw(b_a0, b_ho, USE_DOT, PRECISION)
        else:
            if PIPE:    # instead of the layer below: its projection group, done with t + 1 (the prefetch below)
                _wait(p_bar, i_g, NPG * s, i_pg, tl.where(upper, NPG * tl.minimum(t + 2, T), 0), i_pg, 0, TIMEOUT)
            else:
                i_below = tl.maximum(i_g - i_d - D, 0)              # group (l-1, forward)
                n_below = tl.where((i_l > 0) & (not PRE_X), NPG, 0)
                _wait(p_bar, i_g, NPG * (s + off), i_below, n_below * (t + 1), i_below + D - 1,
                      n_below * tl.where(D == 2, T - t, t + 1), TIMEOUT)
            # h_{t-1}: the group's carried h of generation s (slot s % 2; h0 in slot 0, copied by the launcher).
            # Generation s + 2 overwrites it only after every program of the group has waited for step s + 1,
            # which each reached after reading generation s (kernels/triton_lstm.py's exchange: read from y and
            # h0 with a select, it took 2 loads and 130-190 more instructions a step, sm_90, triton 3.6).
            if USE_DOT:
                b_ri, b_rf, b_rg, b_ro = _fused(p_hxg + (s % 2) * B * H, o_hr, m_hr, H, H, KCR, BLOCK_H, PR, b_hi,
                                                b_hf, b_hg, b_ho, b_zero, PRECISION, TRH, False, p_flag, TIMEOUT,
                                                k_hr, FH)
            else:
                b_h = _rows(p_hxg + (s % 2) * B * H, o_b * H, m_b, H, H, BLOCK_H, BLOCK_H, SPLIT_H)
                b_ri, b_rf = _hw(b_h, b_hi, USE_DOT, PRECISION), _hw(b_h, b_hf, USE_DOT, PRECISION)
                b_rg, b_ro = _hw(b_h, b_hg, USE_DOT, PRECISION), _hw(b_h, b_ho, USE_DOT, PRECISION)
        X: tl.constexpr = p_gx.dtype.element_ty
        b_zi = _unpack_gx(b_gi, X, ACC, WORDS) + b_ri
        b_zf = _unpack_gx(b_gf, X, ACC, WORDS) + b_rf
        b_zg = _unpack_gx(b_gg, X, ACC, WORDS) + b_rg
        b_zo = _unpack_gx(b_go, X, ACC, WORDS) + b_ro
        if HALVES == 2:                                         # the input's second half, and b
            b_zi += _unpack_gx(b_hi2, X, ACC, WORDS) + b_bi
            b_zf += _unpack_gx(b_hf2, X, ACC, WORDS) + b_bf
            b_zg += _unpack_gx(b_hg2, X, ACC, WORDS) + b_bg
            b_zo += _unpack_gx(b_ho2, X, ACC, WORDS) + b_bo
        if MULTI and not (PRE_X or PIPE):
            if upper:
                o_x = (((i_l - 1) * T + t).to(tl.int64) * B + o_b) * DH
                if USE_DOT:     # POLLED: x_t polled (its own loop: a second round trip, this fallback's cost)
                    b_ri, b_rf, b_rg, b_ro = _fused(p_x, o_x, m_b, H, H, KCX, BLOCK_H, PX, b_xi, b_xf, b_xg, b_xo,
                                                    b_zero, PRECISION, TRX, POLLED, p_flag, TIMEOUT)
                elif POLLED:
                    b_x = _poll_rows(p_x, o_x, m_b, H, H, KX, BLOCK_H, SPLIT_X, p_flag, TIMEOUT)
                else:
                    b_x = _rows(p_x, o_x, m_b, H, H, KX, BLOCK_H, SPLIT_X)
                if not USE_DOT:
                    b_ri, b_rf = _hw(b_x, b_xi, USE_DOT, PRECISION), _hw(b_x, b_xf, USE_DOT, PRECISION)
                    b_rg, b_ro = _hw(b_x, b_xg, USE_DOT, PRECISION), _hw(b_x, b_xo, USE_DOT, PRECISION)
                b_zi += b_ri + b_bi
                b_zf += b_rf + b_bf
                b_zg += b_rg + b_bg
                b_zo += b_ro + b_bo

        b_i, b_f, b_g, b_o = _sigmoid(b_zi), _sigmoid(b_zf), _tanh(b_zg), _sigmoid(b_zo)
        b_alive = (t < b_len)[:, None]
        b_c = tl.where(b_alive, b_f * b_c + b_i * b_g, b_c)    # frozen past the row's end
        b_out = tl.where(b_alive, b_o * _tanh(b_c), 0.)
        b_hc = tl.where(b_alive, b_out.to(b_hc.dtype), b_hc)
        if POLLED:
            tl.store(p_hxg + tl.cast(s + 1, tl.int64) * B * H + o_b[:, None] * H + o_u[None, :], _canon(b_hc),
                     mask=m_bu)
        else:
            tl.store(p_hxg + ((s + 1) % 2) * B * H + o_b[:, None] * H + o_u[None, :], b_hc, mask=m_bu)
        o_y = o_t[:, None] * DH + i_d * H + o_u[None, :]
        b_y = b_out.to(p_y.dtype.element_ty)
        tl.store(p_y + o_y, tl.where(i_l < L - 1, _canon(b_y), b_y), mask=m_bu)   # below the top: read above
        if DROPOUT:                                             # the copy the layer above reads
            b_x_out = tl.where(_keep(o_y, seed, drop), b_out / (1. - drop), 0.)
            tl.store(p_x + o_y, _canon(b_x_out.to(p_x.dtype.element_ty)), mask=tl.where(i_l < L - 1, m_bu, False))
        if SAVE:
            o_g = o_t[:, None] * (4 * DH) + i_d * 4 * H + o_u[None, :]
            tl.store(p_gates + o_g, b_i, mask=m_bu)
            tl.store(p_gates + o_g + H, b_f, mask=m_bu)
            tl.store(p_gates + o_g + 2 * H, b_g, mask=m_bu)
            tl.store(p_gates + o_g + 3 * H, b_o, mask=m_bu)
            tl.store(p_cells + o_y, b_c, mask=m_bu)
        if not POLLED:
            _arrive(p_bar + 2 * i_g)
        # the next step's gates_x, after the arrival (sm_90 repacks the loaded halves at once, so the program
        # waits for DRAM right after the load: before the arrival that held up every program's step) and
        # before the wait, whose round trip it overlaps
        b_gi, b_gf, b_gg, b_go = _load_gx(p_gx, p_gxu, tl.where(rev, t - 1, t + 1), i_l, i_d, o_b, o_u, m_bu, T, B,
                                          H, D, PRE_X or PIPE, WORDS, 0, HALVES)
        if HALVES == 2:
            b_hi2, b_hf2, b_hg2, b_ho2 = _load_gx(p_gx, p_gxu, tl.where(rev, t - 1, t + 1), i_l, i_d, o_b, o_u, m_bu,
                                                  T, B, H, D, PRE_X, WORDS, 1, HALVES)

    m_bu = tl.where(proj, False, m_bu)                          # a projection program has no state to write
    tl.store(p_cn + o_s, b_c.to(p_cn.dtype.element_ty), mask=m_bu)
    tl.store(p_hn + o_s, b_hc, mask=m_bu)                       # h_n: the carried h


@triton.jit
def _dz_rows(p_z, o_z, m_b, H, S, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, VOL: tl.constexpr):
    """The four gates' rows of dz at p_z + g·H (``_rows`` with S, K), every load issued before any is used: one
    serial L2 round trip (loaded gate by gate, each gate's loads left only once the previous gate's data was
    back, sm_90, triton 3.6: four). VOL: a try of a poll (volatile)."""
    return (_rows(p_z, o_z, m_b, H, S, K, BLOCK_H, SPLIT, VOL), _rows(p_z + H, o_z, m_b, H, S, K, BLOCK_H, SPLIT, VOL),
            _rows(p_z + 2 * H, o_z, m_b, H, S, K, BLOCK_H, SPLIT, VOL),
            _rows(p_z + 3 * H, o_z, m_b, H, S, K, BLOCK_H, SPLIT, VOL))


@triton.jit
def _dz_poll(p_z, o_z, m_b, H, S, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, p_flag,
             TIMEOUT: tl.constexpr, INT16: tl.constexpr):
    """``_dz_rows`` polled: reloaded until none is UNWRITTEN (TIMEOUT > 0: or the poll gives up). INT16: 16-bit dz
    read as int16, its marks as loaded, and bitcast back."""
    X: tl.constexpr = p_z.dtype.element_ty
    if INT16 and X.primitive_bitwidth == 16:
        p_z = p_z.to(tl.pointer_type(tl.int16))
    b_zi, b_zf, b_zg, b_zo = _dz_rows(p_z, o_z, m_b, H, S, K, BLOCK_H, SPLIT, True)
    late = _unwritten4(b_zi, b_zf, b_zg, b_zo, 4)
    spins = 0
    while late:
        b_zi, b_zf, b_zg, b_zo = _dz_rows(p_z, o_z, m_b, H, S, K, BLOCK_H, SPLIT, True)
        late = _unwritten4(b_zi, b_zf, b_zg, b_zo, 4)
        if TIMEOUT > 0:
            spins += 1
            late = late & ~_given_up(p_flag, spins, TIMEOUT)   # given up: invalid, the launcher raises
    return b_zi.to(X, bitcast=True), b_zf.to(X, bitcast=True), b_zg.to(X, bitcast=True), b_zo.to(X, bitcast=True)


@triton.jit
def _dz_product(b_zi, b_zf, b_zg, b_zo, b_wi, b_wf, b_wg, b_wo, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
                SPREAD: tl.constexpr = False):
    """Σ over the four gates of dz_gate · W_gate ([BB, HT]). SPREAD: the K chunks summed as the single layer's
    ``_chunk_sum`` (the result spread over the warps), else along axis 0 (the result on every warp): spread, the
    bidirectional B16 H512 backward kept 1970 accesses a step in local memory (sm_90, triton 3.6)."""
    if USE_DOT:
        b_z = (_dot(b_zi, b_wi, PRECISION) + _dot(b_zf, b_wf, PRECISION) + _dot(b_zg, b_wg, PRECISION)
               + _dot(b_zo, b_wo, PRECISION))
        if SPREAD:
            return _chunk_sum(b_z)
        return tl.sum(b_z, 0) if len(b_z.shape) == 3 else b_z
    return (_hw(b_zi, b_wi, USE_DOT, PRECISION) + _hw(b_zf, b_wf, USE_DOT, PRECISION)
            + _hw(b_zg, b_wg, USE_DOT, PRECISION) + _hw(b_zo, b_wo, USE_DOT, PRECISION))


@triton.jit
def _dz_w(p_z, o_z, m_b, H, S, K: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, b_wi, b_wf, b_wg, b_wo,
          USE_DOT: tl.constexpr, PRECISION: tl.constexpr, POLL: tl.constexpr = False, p_flag=None,
          TIMEOUT: tl.constexpr = 0, INT16: tl.constexpr = True, SPREAD: tl.constexpr = False):
    """Σ over the four gates of dz_gate · W_gate ([BB, HT]): gate g's rows at p_z + g·H (``_dz_rows``), POLL
    polled (``_dz_poll``: the polled backward; INT16 its choice)."""
    if POLL:
        b_zi, b_zf, b_zg, b_zo = _dz_poll(p_z, o_z, m_b, H, S, K, BLOCK_H, SPLIT, p_flag, TIMEOUT, INT16)
    else:
        b_zi, b_zf, b_zg, b_zo = _dz_rows(p_z, o_z, m_b, H, S, K, BLOCK_H, SPLIT, False)
    return _dz_product(b_zi, b_zf, b_zg, b_zo, b_wi, b_wf, b_wg, b_wo, USE_DOT, PRECISION, SPREAD)


@triton.jit
def _dy(p_zr, t, i_l, o_b, m_b, T, B, H, b_ui, b_uf, b_ug, b_uo, D: tl.constexpr, KX: tl.constexpr,
        BLOCK_H: tl.constexpr, SPLIT_X: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
        POLL: tl.constexpr = False, p_flag=None, TIMEOUT: tl.constexpr = 0, INT16: tl.constexpr = True):
    """dy_l[t] = dz_{l+1}[t] · W_ih(l+1) for own columns (l < L-1: the gradient the layer above sends down to
    layer l's output at t, before dropout), summed over the four gates of every direction above: [BB, HT]. POLL:
    dz_{l+1}[t] polled."""
    DH = D * H
    p_row = p_zr + ((i_l + 1) * T + t).to(tl.int64) * B * (4 * DH)     # the row's start one scalar (see
    return _dz_w(p_row, o_b * (4 * DH), m_b, H, 4 * H, KX, BLOCK_H, SPLIT_X, b_ui, b_uf, b_ug, b_uo, USE_DOT,
                 PRECISION, POLL, p_flag, TIMEOUT, INT16)               # ``_project_half``)


@triton.jit
def _project_dy(p_zr, p_dyu, t, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo,
                D: tl.constexpr, KX: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT_X: tl.constexpr,
                USE_DOT: tl.constexpr, PRECISION: tl.constexpr, POLL: tl.constexpr = False, p_flag=None,
                TIMEOUT: tl.constexpr = 0):
    """``_dy`` into p_dyu [L-1, 1, T, B, D·H] (accumulation dtype), where the layer's recurrence reads it (POLL:
    dz polled, as loaded, and dy stored as the polled backward reads it, ``_canon``). Polled as int16 (as the
    loop of a layer computing its own dy reads it, clean there) a projection group kept 711 values in local
    memory inside its loop at H = 272 (B16 fp16, sm_90, triton 3.6); polled as loaded, the loop computing its
    own dy kept 32 (B5 H512, 3 layers), the bidirectional pairs' projection 8 (H512)."""
    b_dy = _dy(p_zr, t, i_l, o_b, m_b, T, B, H, b_ui, b_uf, b_ug, b_uo, D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION,
               POLL, p_flag, TIMEOUT, False)
    o_r = (i_l * T + t).to(tl.int64) * B + o_b
    tl.store(p_dyu + o_r[:, None] * (D * H) + i_d * H + o_u[None, :], _canon(b_dy) if POLL else b_dy, mask=m_bu)


@triton.jit
def _project_dy_half(p_zr, p_dyu, t, k_h, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo,
                     D: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr, USE_DOT: tl.constexpr,
                     PRECISION: tl.constexpr, POLL: tl.constexpr = False, p_flag=None, TIMEOUT: tl.constexpr = 0):
    """Half k_h of dy_l[t] (bidirectional, l < L-1) for units o_u: the four gates of dz of direction k_h of
    the layer above at t times the same rows of W_ih(l+1, k_h), into p_dyu [L-1, 2, T, B, D·H] at (l, k_h, t);
    the recurrence adds the two halves (``_load_dy``). POLL: dz polled."""
    DH = D * H
    p_row = p_zr + k_h * 4 * H + ((i_l + 1) * T + t).to(tl.int64) * B * (4 * DH)
    b_dy = _dz_w(p_row, o_b * (4 * DH), m_b, H, H, BLOCK_H, BLOCK_H, SPLIT, b_ui, b_uf, b_ug, b_uo, USE_DOT,
                 PRECISION, POLL, p_flag, TIMEOUT)
    o_r = ((i_l * 2 + k_h) * T + t).to(tl.int64) * B + o_b
    tl.store(p_dyu + o_r[:, None] * DH + i_d * H + o_u[None, :], b_dy, mask=m_bu)


@triton.jit
def _load_saved(p_gates, p_cells, p_c0, t, i_l, i_d, o_b, o_u, m_bu, o_s, rev, T, B, H, D: tl.constexpr):
    """What a backward step at t reads of its own units from the forward: the activated gates i, f, g, o,
    c_t and c_{t-1} (c0 at the sequence's start); zeros for a t outside 0 … T-1 (the prefetch after the last
    step). Issued for the next step after the arrival, so its latency hides behind the wait."""
    DH = D * H
    m_t = tl.where((t >= 0) & (t < T), m_bu, False)
    o_t = (i_l * T + t).to(tl.int64) * B + o_b
    o_g = o_t[:, None] * (4 * DH) + i_d * 4 * H + o_u[None, :]
    o_y = o_t[:, None] * DH + i_d * H + o_u[None, :]
    prev = tl.where(rev, t + 1, t - 1)
    in_seq = (prev >= 0) & (prev < T)
    o_p = ((i_l * T + prev).to(tl.int64) * B + o_b)[:, None] * DH + i_d * H + o_u[None, :]
    b_cp = (tl.load(p_cells + o_p, mask=tl.where(in_seq, m_t, False), other=0.)
            + tl.load(p_c0 + o_s, mask=tl.where(in_seq, False, m_t), other=0.))
    return (tl.load(p_gates + o_g, mask=m_t, other=0.), tl.load(p_gates + o_g + H, mask=m_t, other=0.),
            tl.load(p_gates + o_g + 2 * H, mask=m_t, other=0.), tl.load(p_gates + o_g + 3 * H, mask=m_t, other=0.),
            tl.load(p_cells + o_y, mask=m_t, other=0.), b_cp)


@triton.jit
def _load_dy(p_dy, p_dyu, t, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D: tl.constexpr, TOP: tl.constexpr,
             DYU: tl.constexpr, HALVES: tl.constexpr, ACC: tl.constexpr, VOL: tl.constexpr = False):
    """dy_t for own units, the sum of what is asked: TOP, the top layer's from the caller's gradient (p_dy
    [T, B, D·H]); DYU, a lower layer's from what it (bidirectional, HALVES parts to add) or its projection group
    (unidirectional) projected (p_dyu [L-1, HALVES, T, B, D·H]; .cg: another SM wrote it). Zeros for a t outside
    0 … T-1, and for a lower layer without DYU (its loop computes dy). VOL: p_dyu's alone, a try of a poll
    (volatile; the polled backward's projection groups, HALVES = 1)."""
    DH = D * H
    m_t = tl.where((t >= 0) & (t < T), m_bu, False)
    top = i_l == L - 1
    o = (t.to(tl.int64) * B + o_b)[:, None] * DH + i_d * H + o_u[None, :]
    if VOL:     # as loaded: 0 + (-0.0) would be +0.0, an UNWRITTEN element read as written
        p_l = p_dyu + (tl.minimum(i_l, L - 2) * HALVES).to(tl.int64) * T * B * DH
        return tl.load(p_l + o, mask=tl.where(top, False, m_t), other=0., volatile=True)
    b_dy = tl.zeros(m_bu.shape, ACC)
    if TOP:
        b_dy += tl.load(p_dy + o, mask=tl.where(top, m_t, False), other=0.).to(ACC)
    if DYU:
        p_l = p_dyu + (tl.minimum(i_l, L - 2) * HALVES).to(tl.int64) * T * B * DH
        b_dy += tl.load(p_l + o, mask=tl.where(top, False, m_t), other=0., cache_modifier=".cg")
        if HALVES == 2:
            b_dy += tl.load(p_l + tl.cast(T, tl.int64) * B * DH + o, mask=tl.where(top, False, m_t), other=0., cache_modifier=".cg")
    return b_dy


@triton.jit
def _dy_parts(p_dy, p_dyu, t, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D: tl.constexpr, HALVES: tl.constexpr):
    """``_load_dy``'s loads (the caller's dy for the top layer; the HALVES parts a lower layer projected), as
    loaded, for ``_dy_sum`` after the polled backward's poll: summed where they were loaded, the sum waited for
    DRAM before the poll (0.39 µs a step modeled, B16 H512 fp16 bidirectional, sm_90, triton 3.6)."""
    DH = D * H
    m_t = tl.where((t >= 0) & (t < T), m_bu, False)
    top = i_l == L - 1
    o = (t.to(tl.int64) * B + o_b)[:, None] * DH + i_d * H + o_u[None, :]
    p_l = p_dyu + (tl.minimum(i_l, L - 2) * tl.maximum(HALVES, 1)).to(tl.int64) * T * B * DH
    m_0 = tl.where(top | (HALVES == 0), False, m_t)
    m_1 = tl.where(top | (HALVES != 2), False, m_t)
    return (tl.load(p_dy + o, mask=tl.where(top, m_t, False), other=0.),
            tl.load(p_l + o, mask=m_0, other=0., cache_modifier=".cg"),
            tl.load(p_l + tl.cast(T, tl.int64) * B * DH + o, mask=m_1, other=0., cache_modifier=".cg"))


@triton.jit
def _dy_sum(b_top, b_0, b_1, ACC: tl.constexpr):
    return b_top.to(ACC) + b_0 + b_1


@triton.jit(do_not_specialize=["T"])
def _stack_bwd_kernel(
    # pointers (all contiguous)
    p_dy,        # [T, B, D·H] gradient w.r.t. the top layer's output
    p_dhn,       # [L·D, B, H]
    p_dcn,       # [L·D, B, H]
    p_gates,     # [L, T, B, D·4H] (accumulation dtype), saved by forward
    p_cells,     # [L, T, B, D·H]  (accumulation dtype), saved by forward
    p_c0,        # [L·D, B, H] (accumulation dtype)
    p_whh,       # [L, D, 4H, H]
    p_wih,       # [L-1, D, 4H, D·H] W_ih of layers 1 … L-1 (not read when L = 1)
    p_len,       # [B] int32
    p_dz,        # [L, T, B, D·4H] out (accumulation dtype): dz, the gradient w.r.t. the pre-activations
    p_zx,        # [L, T, B, D·4H] input dtype, LOW_EXCHANGE only: dz in 16 bits, what the other programs read
    p_dh0,       # [L·D, B, H] out (accumulation dtype)
    p_dc0,       # [L·D, B, H] out (accumulation dtype)
    p_bar,       # [2·(L·D + projection groups)] int64, zero: per group its counter of finished program-steps
                 # and a time-out flag
    p_seed,      # [1] int64 (DROPOUT): the forward's seed: the same mask, regenerated
    p_dyu,       # [L-1, HALVES, T, B, D·H] (accumulation dtype; PRE_DY or PIPE): dy of layers 0 … L-2,
                 # projected in the kernel from the dz of the layer above
    # sizes
    T, B, L,
    H: tl.constexpr,     # a constant: offsets inside a row become immediates (kernels/triton_lstm.py measured why)
    drop,        # the forward's dropout probability (DROPOUT)
    # meta-parameters
    D: tl.constexpr, NPG: tl.constexpr, HT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
    FULL: tl.constexpr,         # B == BLOCK_B: the row mask is a constant (no predicated loads)
    SPLIT_H: tl.constexpr,      # tl.dot chunks of dz_gate·W_hh,gate (K = BLOCK_H)
    SPLIT_X: tl.constexpr,      # tl.dot chunks of dz_{l+1},gate·W_ih(l+1),gate (K = D·BLOCK_H: both directions)
    MULTI: tl.constexpr,        # L > 1: layers below the top exist
    PRE_DY: tl.constexpr,       # layers below the top project their whole dy before their recurrence (bidirectional)
    HALVES: tl.constexpr,       # PRE_DY with NPG even: program pairs split the projection by direction above
    PIPE: tl.constexpr,         # projection groups feed the layers below the top, a step ahead (unidirectional)
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    LOW_EXCHANGE: tl.constexpr,     # exchange dz in the 16-bit input dtype (the tensor cores read it so anyway)
    DROPOUT: tl.constexpr, TIMEOUT: tl.constexpr,
    POLLED: tl.constexpr,       # every read between programs polled, as the forward's (no counter but one, PRE_DY)
):
    # dz as the programs read it. Exchanged in fp32 it was staged in fp32 for the tensor cores: 256 KB of shared
    # memory at B16 H512 fp16 bidirectional (sm_90, triton 3.6), over an SM's 227 KB; in 16 bits, 224 KB.
    p_zr = p_zx if LOW_EXCHANGE else p_dz
    pid = tl.program_id(0)
    i_p = pid % NPG
    if PIPE:
        # groups [layer L-1, projection L-2, layer L-2, …, layer 0]: each projection group right before the
        # layer it feeds, the top layer first (the order in which the groups wait for each other)
        proj = (pid // NPG) % 2 == 1
        i_g = L - 1 - (pid // NPG + 1) // 2         # the layer (D = 1): its own, or the one it projects for
        i_pg = L + tl.minimum(i_g, L - 2)           # that layer's projection group (its counter)
    else:
        proj = False
        i_g = L * D - 1 - pid // NPG                # top layer first
        i_pg = i_g
    i_l, i_d = i_g // D, i_g % D
    p_flag = p_bar + 2 * i_pg + 1                   # the time-out flag (a projection program: its group's)
    rev = i_d == 1
    DH = D * H
    o_b, m_b = _tile_rows(0, B, BLOCK_B, FULL)
    o_u = i_p * HT + tl.arange(0, HT)
    m_bu = m_b[:, None] & (o_u < H)[None, :]
    o_s = (i_g * B + o_b)[:, None] * H + o_u[None, :]
    KX: tl.constexpr = D * BLOCK_H

    # Below the top layer: the columns of the layer above's W_ih that multiply own units, gate by gate ([D·H, HT]
    # each: that gate of both its directions; HALVES = 2, [H, 2·HT]: one direction, twice the units). One
    # reduction per gate, not one over all gates at once: the one-shot dz operand (K = D·4H) was staged whole in
    # shared memory, 256 KB at B16 H512 fp16 (sm_90, triton 3.6), over the 227 KB of an SM.
    if MULTI:
        lower = i_l < L - 1
        if PIPE:
            on_u = lower & proj                     # only the projection group computes dy
        else:
            on_u = lower
        p_w = p_wih + tl.minimum(i_l, L - 2) * D * 4 * H * DH + i_d * H
        if HALVES == 2:
            k_h = i_p % 2                           # the direction above whose dz this program projects
            o_u2 = (i_p // 2) * (2 * HT) + tl.arange(0, 2 * HT)
            m_bu2 = m_b[:, None] & (o_u2 < H)[None, :]
            p_w += k_h * 4 * H * DH
            b_ui = _w(p_w, DH, 1, on_u, i_p // 2, H, H, 2 * HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)
            b_uf = _w(p_w + H * DH, DH, 1, on_u, i_p // 2, H, H, 2 * HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)
            b_ug = _w(p_w + 2 * H * DH, DH, 1, on_u, i_p // 2, H, H, 2 * HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT,
                      ACC)
            b_uo = _w(p_w + 3 * H * DH, DH, 1, on_u, i_p // 2, H, H, 2 * HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT,
                      ACC)
        else:
            b_ui = _w(p_w, DH, 1, on_u, i_p, H, 4 * H, HT, KX, BLOCK_H, SPLIT_X, USE_DOT, ACC)
            b_uf = _w(p_w + H * DH, DH, 1, on_u, i_p, H, 4 * H, HT, KX, BLOCK_H, SPLIT_X, USE_DOT, ACC)
            b_ug = _w(p_w + 2 * H * DH, DH, 1, on_u, i_p, H, 4 * H, HT, KX, BLOCK_H, SPLIT_X, USE_DOT, ACC)
            b_uo = _w(p_w + 3 * H * DH, DH, 1, on_u, i_p, H, 4 * H, HT, KX, BLOCK_H, SPLIT_X, USE_DOT, ACC)
    if PRE_DY:
        # Bidirectional: a layer's dy_t needs dz_{l+1}[t] of both directions above, whose backward walks reach
        # t = 0 and t = T-1 last, so the layer starts only once the layer above has finished (the forward's
        # argument, mirrored). Its programs, idle until then, project its whole dy meanwhile: after k of its
        # steps the layer above has dz at t ≥ T-k (its forward direction) and t < k (its reverse one), so from
        # k = T//2 + 1 on each k brings t = k-1 and t = T-k; HALVES = 2: a program pair splits the reduction by
        # direction above, each half at t = T-k (forward) or k-1 (reverse) as soon as that direction has it, for
        # twice the units (every row of dz read half as often). Then one arrival, and the recurrence reads dy as
        # the top layer reads the caller's (no dz·W_ih in its loop, one wait per step).
        if lower:
            i_above = i_g - i_d + D                             # group (l+1, forward)
            b0 = NPG * (i_l + 1 < L - 1).to(tl.int32)           # a layer above below the top arrived once first
            if HALVES == 2:
                for k in tl.range(1, T + 1, num_stages=1):
                    if not POLLED:
                        _wait(p_bar, i_g, 0, i_above + k_h, b0 + NPG * k, i_above + k_h, 0, TIMEOUT)
                    _project_dy_half(p_zr, p_dyu, tl.where(k_h == 0, T - k, k - 1), k_h, i_l, i_d, o_b, m_b, o_u2,
                                     m_bu2, T, B, H, b_ui, b_uf, b_ug, b_uo, D, BLOCK_H, SPLIT_H, USE_DOT,
                                     PRECISION, POLLED, p_flag, TIMEOUT)
            else:
                for k in tl.range(T // 2 + 1, T + 1, num_stages=1):
                    if not POLLED:
                        _wait(p_bar, i_g, 0, i_above, b0 + NPG * k, i_above + 1, b0 + NPG * k, TIMEOUT)
                    _project_dy(p_zr, p_dyu, k - 1, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo,
                                D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, POLLED, p_flag, TIMEOUT)
                    _project_dy(p_zr, p_dyu, T - k, i_l, i_d, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo,
                                D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, POLLED, p_flag, TIMEOUT)
            _arrive(p_bar + 2 * i_g)
            _wait(p_bar, i_g, NPG, i_g, 0, i_g, 0, TIMEOUT)    # the group's dy complete before the first read
        off = lower.to(tl.int32)                                # arrivals before the recurrence's steps
    else:
        off = 0
    if PIPE:
        # Unidirectional: a projection group per layer below the top computes its dy_t = dz_{l+1}[t]·W_ih(l+1)
        # as soon as the layer above has dz_t, a step ahead of the layer, whose step then has one reduction,
        # dz·W_hh, and one wait, as the top layer's: T + 2(L-1) steps of the reverse wavefront.
        # As the forward's: the group's own previous step awaited too, so its counter counts whole steps.
        if POLLED:
            # the first step's projection, then one arrival: the layer below awaits its first dy through the
            # counter (a poll of it, its tile carried through the poll's loop before the time loop, crashed triton
            # 3.6's layout pass, sm_90); every later dy it polls
            if proj:
                _project_dy(p_zr, p_dyu, T - 1, i_l, 0, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo, D, KX,
                            BLOCK_H, SPLIT_X, USE_DOT, PRECISION, True, p_flag, TIMEOUT)
                _arrive(p_bar + 2 * i_pg)
        for s in tl.range(tl.where(proj, 1 if POLLED else 0, 0), tl.where(proj, T, 0), num_stages=1):
            if not POLLED:
                _wait(p_bar, i_pg, NPG * s, i_g + 1, NPG * (s + 1), i_g + 1, 0, TIMEOUT)
            _project_dy(p_zr, p_dyu, T - 1 - s, i_l, 0, o_b, m_b, o_u, m_bu, T, B, H, b_ui, b_uf, b_ug, b_uo,
                        D, KX, BLOCK_H, SPLIT_X, USE_DOT, PRECISION, POLLED, p_flag, TIMEOUT)
            if not POLLED:
                _arrive(p_bar + 2 * i_pg)
        # a layer below the top reads its first dy before its loop: its projection group done with t = T-1
        _wait(p_bar, i_g, 0, i_pg, tl.where(lower & ~proj, NPG, 0), i_pg, 0, TIMEOUT)

    # Loaded ONCE, gate by gate: the columns of W_hh for own units ([H, HT] each).
    p_w = p_whh + i_g * 4 * H * H
    b_ri = _w(p_w, H, 1, True, i_p, H, H, HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)
    b_rf = _w(p_w + H * H, H, 1, True, i_p, H, H, HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)
    b_rg = _w(p_w + 2 * H * H, H, 1, True, i_p, H, H, HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)
    b_ro = _w(p_w + 3 * H * H, H, 1, True, i_p, H, H, HT, BLOCK_H, BLOCK_H, SPLIT_H, USE_DOT, ACC)

    b_dh = tl.load(p_dhn + o_s, mask=m_bu, other=0.).to(ACC)
    b_dc = tl.load(p_dcn + o_s, mask=m_bu, other=0.).to(ACC)
    b_len = tl.load(p_len + o_b, mask=m_b, other=0)
    seed = tl.load(p_seed) if DROPOUT else 0
    # the first step's reads: what it needs of the forward and its dy
    t0 = tl.where(rev, 0, T - 1)
    b_i, b_f, b_g, b_o, b_ct, b_cp = _load_saved(p_gates, p_cells, p_c0, t0, i_l, i_d, o_b, o_u, m_bu, o_s, rev, T,
                                                 B, H, D)
    b_dy = _load_dy(p_dy, p_dyu, t0, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D, True, PRE_DY or PIPE, HALVES, ACC)
    for s in tl.range(tl.where(proj, 0, T), num_stages=1):     # num_stages=1: no load hoisted above a wait
        t = tl.where(rev, s, T - 1 - s)                         # the opposite order to forward
        o_t = ((i_l * T + t).to(tl.int64) * B + o_b)
        o_y = o_t[:, None] * DH + i_d * H + o_u[None, :]
        o_g = o_t[:, None] * (4 * DH) + i_d * 4 * H + o_u[None, :]
        if MULTI and not (PRE_DY or PIPE):
            if lower:       # dy_t = dz_{l+1}[t] · W_ih(l+1), own columns, in the loop (no room for a projection)
                # the layer above done with t: its forward direction (walking T-1 … 0) after T-t of its steps,
                # its reverse direction (0 … T-1) after t+1
                i_above = i_g - i_d + D                         # group (l+1, forward)
                if not POLLED:
                    _wait(p_bar, i_above, NPG * (T - t), i_above + D - 1, NPG * tl.where(D == 2, t + 1, T - t),
                          i_above, 0, TIMEOUT)
                b_dy = _dy(p_zr, t, i_l, o_b, m_b, T, B, H, b_ui, b_uf, b_ug, b_uo, D, KX, BLOCK_H, SPLIT_X, USE_DOT,
                           PRECISION, POLLED, p_flag, TIMEOUT)
        if DROPOUT:                                             # a lower layer's output was dropped out
            b_dy = tl.where(lower, tl.where(_keep(o_y, seed, drop), b_dy / (1. - drop), 0.), b_dy)

        b_alive = (t < b_len)[:, None]
        b_tc = _tanh(b_ct)
        b_dht = b_dh + tl.where(b_alive, b_dy, 0.)              # dh_t = dh + dy_t
        b_dct = b_dc + b_dht * b_o * (1. - b_tc * b_tc)         # dc_t = dc + dh_t ⊙ o ⊙ (1 - tanh²c)
        b_dzi = tl.where(b_alive, b_dct * b_g * b_i * (1. - b_i), 0.)
        b_dzf = tl.where(b_alive, b_dct * b_cp * b_f * (1. - b_f), 0.)
        b_dzg = tl.where(b_alive, b_dct * b_i * (1. - b_g * b_g), 0.)
        b_dzo = tl.where(b_alive, b_dht * b_tc * b_o * (1. - b_o), 0.)
        if POLLED and not LOW_EXCHANGE:     # the others read this copy: a -0.0 as +0.0 (``_canon``)
            b_dzi, b_dzf, b_dzg, b_dzo = _canon(b_dzi), _canon(b_dzf), _canon(b_dzg), _canon(b_dzo)
        tl.store(p_dz + o_g, b_dzi, mask=m_bu)
        tl.store(p_dz + o_g + H, b_dzf, mask=m_bu)
        tl.store(p_dz + o_g + 2 * H, b_dzg, mask=m_bu)
        tl.store(p_dz + o_g + 3 * H, b_dzo, mask=m_bu)
        if LOW_EXCHANGE:
            X = p_zx.dtype.element_ty
            if POLLED:
                tl.store(p_zx + o_g, _canon(b_dzi.to(X)), mask=m_bu)
                tl.store(p_zx + o_g + H, _canon(b_dzf.to(X)), mask=m_bu)
                tl.store(p_zx + o_g + 2 * H, _canon(b_dzg.to(X)), mask=m_bu)
                tl.store(p_zx + o_g + 3 * H, _canon(b_dzo.to(X)), mask=m_bu)
            else:
                tl.store(p_zx + o_g, b_dzi.to(X), mask=m_bu)
                tl.store(p_zx + o_g + H, b_dzf.to(X), mask=m_bu)
                tl.store(p_zx + o_g + 2 * H, b_dzg.to(X), mask=m_bu)
                tl.store(p_zx + o_g + 3 * H, b_dzo.to(X), mask=m_bu)
        b_dc = tl.where(b_alive, b_dct * b_f, b_dc)             # dc ← dc_t ⊙ f
        if not POLLED:
            _arrive(p_bar + 2 * i_g)

        # the next step's reads of the forward (and of dy, where it is ready), after the arrival and before the
        # wait, whose round trip their latency overlaps
        t_n = tl.where(rev, t + 1, t - 1)
        b_i, b_f, b_g, b_o, b_ct, b_cp = _load_saved(p_gates, p_cells, p_c0, t_n, i_l, i_d, o_b, o_u, m_bu, o_s,
                                                     rev, T, B, H, D)
        if POLLED and not PIPE:     # summed after the poll (``_dy_parts``)
            b_yt, b_y0, b_y1 = _dy_parts(p_dy, p_dyu, t_n, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D,
                                         HALVES if PRE_DY else 0)
        else:
            b_dy = _load_dy(p_dy, p_dyu, t_n, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D, True, PRE_DY, HALVES, ACC)
        p_zt = p_zr + (i_l * T + t).to(tl.int64) * B * (4 * DH) + i_d * 4 * H     # own group's dz_t, the row's start
        if POLLED and PIPE:
            # own group's dz_t and the projection of the next step's dy (a layer below the top) polled in one
            # loop: one round trip when all is there
            p_zq = p_zt.to(tl.pointer_type(tl.int16)) if p_zt.dtype.element_ty.primitive_bitwidth == 16 else p_zt
            b_zi, b_zf, b_zg, b_zo = _dz_rows(p_zq, o_b * (4 * DH), m_b, H, H, BLOCK_H, BLOCK_H, SPLIT_H, True)
            b_dn = _load_dy(p_dy, p_dyu, t_n, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D, False, True, HALVES, ACC, True)
            late = _unwritten4(b_zi, b_zf, b_zg, b_zo, 4) | _unwritten(_marks(b_dn))
            spins = 0
            while late:
                b_zi, b_zf, b_zg, b_zo = _dz_rows(p_zq, o_b * (4 * DH), m_b, H, H, BLOCK_H, BLOCK_H, SPLIT_H, True)
                b_dn = _load_dy(p_dy, p_dyu, t_n, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D, False, True, HALVES, ACC,
                                True)
                late = _unwritten4(b_zi, b_zf, b_zg, b_zo, 4) | _unwritten(_marks(b_dn))
                if TIMEOUT > 0:
                    spins += 1
                    late = late & ~_given_up(p_flag, spins, TIMEOUT)   # given up: invalid, the launcher raises
            b_dy += b_dn
            Z: tl.constexpr = p_zt.dtype.element_ty
            b_new = _dz_product(b_zi.to(Z, bitcast=True), b_zf.to(Z, bitcast=True), b_zg.to(Z, bitcast=True),
                                b_zo.to(Z, bitcast=True), b_ri, b_rf, b_rg, b_ro, USE_DOT, PRECISION, D == 1)
        else:
            if PIPE and not POLLED:     # one wait: own group's dz_t and the projection of the next step's dy
                _wait(p_bar, i_g, NPG * (s + 1), i_pg, tl.where(lower, NPG * tl.minimum(s + 2, T), 0), i_pg, 0,
                      TIMEOUT)
                b_dy += _load_dy(p_dy, p_dyu, t_n, i_l, i_d, o_b, o_u, m_bu, T, B, L, H, D, False, True, HALVES, ACC)
            elif NPG > 1 and not POLLED:
                _wait(p_bar, i_g, NPG * (s + 1 + off), i_g, 0, i_g, 0, TIMEOUT)   # all of own group's dz_t written
            b_new = _dz_w(p_zt, o_b * (4 * DH), m_b, H, H, BLOCK_H, BLOCK_H, SPLIT_H, b_ri, b_rf, b_rg, b_ro, USE_DOT,
                          PRECISION, POLLED, p_flag, TIMEOUT, SPREAD=D == 1)
            if POLLED and not PIPE:
                b_dy = _dy_sum(b_yt, b_y0, b_y1, ACC)
        b_dh = tl.where(b_alive, b_new.to(ACC), b_dh)           # dh ← dz_t · W_hh; frozen rows pass it through

    m_bu = tl.where(proj, False, m_bu)                          # a projection program has no state to write
    tl.store(p_dh0 + o_s, b_dh, mask=m_bu)
    tl.store(p_dc0 + o_s, b_dc, mask=m_bu)


# ----------------------------------------------------------------------------------------------------
# 2. Launchers: check, allocate, launch
# ----------------------------------------------------------------------------------------------------

_TL_ACC = {torch.float64: tl.float64, torch.float32: tl.float32}
# The forward polls what it reads (``_canon``); False: the epoch counters. Bidirectional too, since
# its projection (program pairs, 2·HT units) holds less across its loop: the bias loaded where it is added, the
# row's address one scalar, its zeros one (B16 H512 fp16, triton 3.6: 33-35 values in local memory inside the
# loop -> 5 reloads of loop invariants, no store; bench/static_stack.py charges each a serial L1 hit). Through the
# counters the bidirectional stack modeled 0.95x of per-layer launches, polled 0.65x.
POLLED_FORWARD = True
# The backward likewise (False: its epoch counters): its own group's dz_t (already a slot per step, [L, T, B, D·4H]),
# the dz of the layer above that a projection (or a layer's own loop) reads and the projection group's dy
# (unidirectional), all filled with -0.0 before the launch and polled. Each poll compiled clean (every stack that
# fits 132 SMs, H 128-512, 2-4 layers, B 1 / 5 / 16, fp16 and bf16, triton 3.6) once each read of dz chose int16
# or as loaded (``_project_dy``).
POLLED_BACKWARD = True


def choose_config(*, B: int, H: int, L: int, D: int, dtype: torch.dtype, device: torch.device) -> StackConfig:
    """The GPU rule for this device's SMs (the caller has checked the stack fits), or the interpreter's."""
    if device.type != "cuda":
        return interpreter_config(B=B, H=H, L=L, D=D, dtype=dtype)
    return gpu_config(B=B, H=H, L=L, D=D, dtype=dtype,
                      n_sm=torch.cuda.get_device_properties(device).multi_processor_count)


def _launch_options(cfg: StackConfig, device: torch.device) -> dict:
    """As the single-layer kernels (kernels/triton_lstm.py): one program per SM may use every register, and a
    grid of several programs is cooperative, so the driver refuses a grid that cannot be co-resident."""
    opts = dict(num_warps=cfg.num_warps, num_stages=1)
    if device.type in ("cuda", "meta"):
        opts["maxnreg"] = 255
        if cfg.num_programs > 1:
            opts["launch_cooperative_grid"] = True
    return opts


def _meta(cfg: StackConfig, L: int, D: int, B: int, dtype: torch.dtype) -> dict:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(D=D, NPG=cfg.programs_per_group, HT=cfg.ht, BLOCK_H=cfg.block_h, BLOCK_B=cfg.block_b,
                FULL=triton_lstm._full_tiles(B, B, cfg.block_b),
                MULTI=L > 1, USE_DOT=cfg.use_dot, PRECISION=cfg.precision, ACC=_TL_ACC[acc],
                TIMEOUT=barrier_timeout())


def _fused_pieces(cfg: StackConfig, D: int, dtype: torch.dtype) -> dict:
    """The forward's fused products (tensor cores): h·W_hhᵀ (K = BLOCK_H) and x·W_ihᵀ (K = D·BLOCK_H) each in at
    most 4 pieces of a power of two ≥ 16 (kernels/triton_config.py's ``fused_pieces``); h·W_hhᵀ with K folded
    into M (FH = 2: each half of K in ``fold_pieces``, W_hh in registers) where the single layer folds too:
    16-bit, 16-row tiles, 16 units a program on 8 warps (M = 2·4·16, two warpgroups): KCR, PR. The bidirectional
    projection in program pairs keeps KCH, PH."""
    ph, kch = fused_pieces(cfg.block_h)
    px, kcx = fused_pieces(D * cfg.block_h)
    # transposed (wgmma) where K ≤ 512: at K = 1024 (a bidirectional projection without program pairs, H = 272)
    # ptxas kept the wgmma descriptors in registers and spilled 72 accesses per step in the loop (triton 3.6)
    tr = cfg.use_dot and transposed_gates()
    fh = recurrence_fold(cfg, dtype)
    pr, kcr = fold_pieces(cfg.block_h) if fh > 1 else (ph, kch)    # each half of BLOCK_H exactly (BLOCK_H ≥ 32)
    return dict(KCH=kch, PH=ph, KCX=kcx, PX=px, TRH=tr and ph * kch <= 512, TRX=tr and px * kcx <= 512, FH=fh,
                KCR=kcr, PR=pr)


def _seed(seed: torch.Tensor | None, drop: bool, stand_in: torch.Tensor) -> torch.Tensor:
    """The kernels' p_seed: ``seed`` when they drop out, else a stand-in they never read."""
    if not drop:
        return stand_in
    if seed is None or seed.shape != (1,) or seed.dtype != torch.int64 or seed.device != stand_in.device:
        raise ValueError(f"dropout needs seed, a [1] int64 tensor on {stand_in.device}, got "
                         f"{None if seed is None else (tuple(seed.shape), seed.dtype, seed.device)}")
    return seed


def stack_fwd(gx0, w_ih, w_hh, bias, h0, c0, lengths, *, dropout: float = 0.0, seed: torch.Tensor | None = None,
              save: bool = True, config: StackConfig | None = None):
    """Launch the forward kernel. ``gx0`` [T, B, D·4H] (layer 0's input gates, both directions), ``w_ih``
    [L-1, D, 4H, D·H], ``w_hh`` [L, D, 4H, H], ``bias`` [L-1, D, 4H] or None, ``h0``/``c0`` [L·D, B, H],
    ``lengths`` [B] or None; ``dropout`` > 0 drops the outputs of layers 0 … L-2 as the layer above reads them,
    with the mask of ``seed`` ([1] int64 on the device).
    Returns y [L, T, B, D·H], h_n, c_n [L·D, B, H], gates, cells (accumulation dtype; None unless ``save``),
    x [L-1, T, B, D·H] (the dropped-out outputs; None without dropout)."""
    L, D, G, H = w_hh.shape
    T, B, _ = gx0.shape
    dtype, device = gx0.dtype, gx0.device
    if gx0.element_size() == 2 and gx0.data_ptr() % 4:
        gx0 = gx0.clone()           # the kernel reads 16-bit gates_x as 32-bit words: a 4-byte aligned base
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    cfg = config or choose_config(B=B, H=H, L=L, D=D, dtype=dtype, device=device)
    lens = host.lengths_or_full(lengths, T, B, device)
    drop = L > 1 and dropout > 0

    y = torch.empty(L, T, B, D * H, dtype=dtype, device=device)
    x = torch.empty(L - 1, T, B, D * H, dtype=dtype, device=device) if drop else None
    h_n = torch.empty(L * D, B, H, dtype=dtype, device=device)
    c_n = torch.empty(L * D, B, H, dtype=dtype, device=device)
    gates = torch.empty(L, T, B, D * G, dtype=acc, device=device) if save else None
    cells = torch.empty(L, T, B, D * H, dtype=acc, device=device) if save else None
    unused = torch.empty(1, dtype=acc, device=device)
    pre_x = L > 1 and D == 2        # bidirectional: layers ≥ 1 project their input while the layer below runs
    pipe = cfg.proj_groups > 0      # unidirectional: projection groups feed layers ≥ 1 (kernel, PIPE)
    halves = cfg.projection_halves if pre_x else 1                     # program pairs split the input row
    gxu = torch.empty(L - 1, halves, T, B, D * G, dtype=dtype, device=device) if pre_x or pipe else gx0
    bar = barrier_state(device, L * D + cfg.proj_groups)
    polled = (POLLED_FORWARD
              and L * D * (T + 1) * B * H * gx0.element_size() <= triton_lstm.POLLED_SLOTS_BYTES)   # its h ring
    if polled:      # everything one program writes and another reads: UNWRITTEN (-0.0) until written
        h_exchange = torch.full((L * D, T + 1, B, H), -0.0, dtype=dtype, device=device)
        h_exchange[:, 0] = h0 + 0.0     # generation 0: h0, a -0.0 as +0.0
        (y[:L - 1] if x is None else x).fill_(-0.0)
        if pre_x or pipe:
            gxu.fill_(-0.0)
    else:
        h_exchange = torch.empty(L * D, 2, B, H, dtype=dtype, device=device)
        h_exchange[:, 0].copy_(h0)      # generation 0 (so the first synchronisation inside is step 0's)
    meta = _meta(cfg, L, D, B, dtype)
    with host.device_guard(device):
        _stack_fwd_kernel[(cfg.num_programs,)](
            gx0, w_ih, w_hh, unused if bias is None else bias, h0, c0, lens, y, y if x is None else x, h_n, c_n,
            unused if gates is None else gates, unused if cells is None else cells, bar, _seed(seed, drop, lens),
            gxu, h_exchange, T, B, L, H, float(dropout),
            SPLIT_H=cfg.split(1), SPLIT_X=cfg.split(D), **_fused_pieces(cfg, D, dtype), SAVE=save, DROPOUT=drop,
            HAS_BIAS=bias is not None,
            PRE_X=pre_x, PIPE=pipe, HALVES=halves, POLLED=polled,
            **meta, **_launch_options(cfg, device))
    if meta["TIMEOUT"]:
        raise_if_timed_out(bar, "stack forward")
    return y, h_n, c_n, gates, cells, x


def stack_bwd(dy, dh_n, dc_n, gates, cells, c0, w_ih, w_hh, lengths, *, dropout: float = 0.0,
              seed: torch.Tensor | None = None, config: StackConfig | None = None):
    """Launch the backward kernel. ``dy`` [T, B, D·H] (the top layer's output gradient), ``dh_n``/``dc_n``
    [L·D, B, H], the forward's saved ``gates``/``cells``, its ``dropout`` and ``seed``. Returns dz
    [L, T, B, D·4H], dh0, dc0 [L·D, B, H] (accumulation dtype)."""
    L, D, G, H = w_hh.shape
    T, B, _ = dy.shape
    dtype, device, acc = dy.dtype, dy.device, gates.dtype
    cfg = (config or choose_config(B=B, H=H, L=L, D=D, dtype=dtype, device=device)).backward()
    lens = host.lengths_or_full(lengths, T, B, device)
    drop = L > 1 and dropout > 0

    dz = torch.empty(L, T, B, D * G, dtype=acc, device=device)
    low_exchange = cfg.use_dot and dtype in (torch.float16, torch.bfloat16)
    dz_exchange = torch.empty(L, T, B, D * G, dtype=dtype, device=device) if low_exchange else dz
    dh0 = torch.empty(L * D, B, H, dtype=acc, device=device)
    dc0 = torch.empty(L * D, B, H, dtype=acc, device=device)
    pre_dy = L > 1 and D == 2       # bidirectional: layers below the top project their dy before their recurrence
    pipe = cfg.proj_groups > 0      # unidirectional: projection groups feed the layers below the top
    halves = cfg.projection_halves if pre_dy else 1
    dyu = torch.empty(L - 1, halves, T, B, D * H, dtype=acc, device=device) if pre_dy or pipe else dz
    bar = barrier_state(device, L * D + cfg.proj_groups)
    polled = POLLED_BACKWARD
    if polled:      # everything one program writes and another reads: UNWRITTEN (-0.0) until written
        dz_exchange.fill_(-0.0)
        if pipe:
            dyu.fill_(-0.0)
    # row masks kept (FULL off): with constant ones ptxas put 2776 bytes of the backward in local memory (B16 H512
    # fp16, 2 layers, sm_90, triton 3.6; modeled 5.0 -> 12.7 µs/step), where the forward lost 33 instructions a step
    meta = dict(_meta(cfg, L, D, B, dtype), FULL=False)
    with host.device_guard(device):
        _stack_bwd_kernel[(cfg.num_programs,)](
            dy, dh_n, dc_n, gates, cells, c0.to(acc), w_hh, w_ih, lens, dz, dz_exchange, dh0, dc0, bar,
            _seed(seed, drop, lens), dyu, T, B, L, H, float(dropout),
            SPLIT_H=cfg.split(1), SPLIT_X=cfg.split(D), PRE_DY=pre_dy, HALVES=halves, PIPE=pipe,
            LOW_EXCHANGE=low_exchange, DROPOUT=drop, POLLED=polled,
            **meta, **_launch_options(cfg, device))
    if meta["TIMEOUT"]:
        raise_if_timed_out(bar, "stack backward")
    return dz, dh0, dc0
