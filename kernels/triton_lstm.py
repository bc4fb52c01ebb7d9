"""Persistent fused LSTM recurrence in Triton: forward and backward, one launch for all T steps each.

Supports: one layer, one direction per call (reverse too), no projection (lstm_gpu/functional.py folds one into W_hh), packed
sequences (per-sequence ``lengths``, any order), float16, bfloat16 and float32 with tf32 on tensor cores
(tl.dot), float32-ieee and float64 on CUDA cores (tl.dot in IEEE fp32 where it compiles without spills, else a
register broadcast-multiply-sum); tf32 takes the tensor cores up to H = 1024 in the forward (8 units a program
above H = 768, where 16 units' fp32 weights do not fit; not yet run on a GPU). H ≤ 1536 in 16 bits,
≤ 1024 in fp32, ≤ 528 in fp64, on a 132-SM H100: the whole W_hh must stay on chip, spread over the programs (``triton_config``
has the rules and says the limit when a call does not fit).
Tested on: the Triton CPU interpreter (TRITON_INTERPRET=1: one program, and every program of a grid at
once through ``lstm_gpu.testing.concurrent_programs``) against lstm_gpu/reference.py in
float64/float32/float16; compiled for sm_90 exactly as launched (tests/test_triton_sm90.py: registers,
spills, shared memory of every config) and read by the static profiler (``python -m bench.static``).
Run on ONE GPU so far (an H200, 2026-11-28, reports/README.md): the smoke grid (fp16 / bf16 / fp32, H 256-1536,
B 1-64, packed, bidirectional, barrier time-out on) matched the reference; timed, B16 H768 fp16 forward 3.21
µs/step (cuDNN persistent 2.06). The GPU tests (tests/test_triton_gpu.py) have not run yet; speed figures in
comments are modeled unless they say measured.
Known risks: (1) the step synchronisation deadlocks if the programs are not all co-resident (the
cooperative launch should refuse instead); (2) the configs were chosen from sm_90 compiles and a static
model, not from measurements; (3) the compiler is trusted to stage the W_hh blocks in shared memory once
before the time loop (the smem figure of the sm_90 compile says it does, a GPU run must confirm); they are
read back from shared memory every step, which the model makes the largest part of a step's compute;
(4) on the per-gate path the K chunks sit on different warps; ``_chunk_sum`` moves them to one axis through
shared memory and adds them in registers, so the tile comes out spread over the warps (summed along axis 0 it
was copied on every warp, and everything combined with it converted into that copy every step; the stack's
bidirectional backward still sums so: the other way spilled there); (5) fp16/bf16 exchange h
(and dz, backward) between programs in 16 bits, as cuDNN's fp16 GEMMs consume them, while the reference
carries them in fp32: a small, tolerated difference (the tensor cores would round dz to 16 bits anyway,
so exchanging it in 16 bits changes no result and halves the bytes); (6) fp32-ieee runs tl.dot in IEEE fp32
(FMAs on CUDA cores, the reduction inside each thread) only where that compiled without spills (H ≤ 768
forward, ≤ 512 backward, B a multiple of 16 or a forward tile of 8-15 rows, at HT 4-8, 4 warps, K unsplit; at
HT 16, in K chunks or with rows masked off it spilled 31-5160 local accesses per step); elsewhere fp32-ieee and fp64 keep the broadcast path (B/BLOCK_B passes over registers
per step, shuffle reductions): fp64 tl.dot (DMMA) spilled 193-1220 accesses per step (triton 3.6); (7) on a GPU
the fp32 activations use the hardware's approximate exp2 and reciprocal with denormals flushed (``_APPROX``,
inline PTX, relative error about 2^-22), which the interpreter cannot run: the CPU tests check the same formula
on numpy's exp2 and division; only a GPU run checks the two instructions (not yet run).

Dimension legend
    T  time steps          B  batch            H  hidden units          G = 4H  gates (i, f, g, o)
    HT hidden units per program (all four gates of them)       K  = BLOCK_K (+ K_TAIL) ≥ H, the reduction dim
    BB batch rows per tile (BLOCK_B)                            NP  programs in the grid = cdiv(H, HT)
    K_SPLIT chunks of K on the tl.dot path (independent accumulators, summed after the products)
    K_TAIL  a second, smaller power-of-two piece of K after BLOCK_K (tl.dot; 0: none), in K_SPLIT chunks too

The equations (PyTorch's gate order i, f, g, o; σ = sigmoid, ⊙ = elementwise):

    z_t = gates_x[t] + h_{t-1} · W_hhᵀ          [B, 4H]    gates_x = x·W_ihᵀ + b, one GEMM outside
    i, f, o = σ(z_i), σ(z_f), σ(z_o)     g = tanh(z_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

    backward, walking time the other way (dh, dc carried; dh starts at dh_n, dc at dc_n):
    dh_t  = dh + dy_t                           dc_t = dc + dh_t ⊙ o ⊙ (1 - tanh²c_t)
    dz_i = dc_t ⊙ g ⊙ i(1-i)     dz_f = dc_t ⊙ c_{t-1} ⊙ f(1-f)     dz_g = dc_t ⊙ i ⊙ (1-g²)
    dz_o = dh_t ⊙ tanh c_t ⊙ o(1-o)
    dh ← dz_t · W_hh   (needs ALL of dz_t: a grid barrier per step)     dc ← dc_t ⊙ f

Work split (the "persistent" part): program p owns hidden units [p·HT, (p+1)·HT) in all four gates,
so its cell update needs nothing from the other programs. Forward keeps the rows of W_hh for its units,
one [K, HT] block per gate (b_wi, b_wf, b_wg, b_wo), on chip for the whole launch; every step it reads
the full h_{t-1} that all programs published in an exchange slot (two slots used alternately), publishes
its slice of h_t in the other slot (and writes it into y[t]) and meets the others at the step counter
(kernels/triton_barrier.py: one L2 round trip). Or, ``polled_h`` (16-bit h, where a batch group is one
16-row tile): each generation of h has a slot of its own, written once, and the readers poll the data
itself until no element is still UNWRITTEN: no counter, no fence, one round trip instead of three (see the
exchange below).
Backward keeps the columns W_hh[:, p's units] per gate,
writes its slice of dz_t, waits, then reads all of dz_t (polled, at one 16-row tile where the four gates' dz
loads go out together: dz_t in 16 bits in a slot of its own, polled like h, no counter). Batch groups: when the unit split leaves SMs idle
and the batch has several tiles, program (p, q) of the grid (units, groups) runs units p of the rows of
group q only; the groups are independent recurrences, each with its own step counter.

Tensor cores (tl.dot path): the batch tile is padded to 16 (or 32) rows. Forward, fused gates (PIECES > 0):
W_hh's rows for the program's units are one [K, 4·HT] block per piece of K, the four gates side by side
(column 4u + gate), so each piece is ONE tl.dot into [BB, 4·HT], spread over the warps; K = H is cut in up to
four pieces (768 = 3 x 256, 1024 = 4 x 256), each its own accumulator (a chain of K/PIECES/16 dependent
MMAs), added in registers, then split into the gates (``_gates_of``). Every piece's h load is issued
before the first product: one L2 round trip. Where it compiles clean (``triton_config``: TRANSPOSED), the
fused product is computed transposed, [4·HT, BB] = W · hᵀ: M = 4·HT = 64 is one warpgroup MMA on Hopper
(HGMMA), which reads W and hᵀ from shared memory once per warpgroup, where the [BB, 4·HT] product's mma.sync
has every warp ldmatrix all of h and its quarter of W each step. Shared memory, not the tensor cores, bounds
this product: W_hh stays in shared memory and is read back every step (128 B per cycle per SM; the static
profiler counts it). So where it fits (16-bit, 16-row tiles, H ≤ 1024: ``triton_config``, FOLD = 2) K is folded
into M and W_hh held in registers instead (``_load_w_folded``): row (f, gate, u) of the operand holds half f of
K, so each of two warpgroups keeps 64 rows × K/2 (H/8 registers a thread); h enters as its two halves side by
side (2·BB columns) and of the product's four blocks the two whose halves match are added (``_unfold``).
Elsewhere (backward; forward at H = 1536, where h's pieces
do not fit beside the weights) per gate: the K = H reduction is split into
K_SPLIT chunks held as a third tensor dimension, so each chunk is its own accumulator and the longest
chain of dependent MMAs per step is K/K_SPLIT/16 (a few instead of 48 at H = 768), then the chunks are
summed across the warps (shared memory and shuffles: half the forward's instructions per step at B64
H1024, which is why the forward fuses). The backward issues the loads of dz_t for all four gates together
(DZ_ONE_ROUND, where their tiles fit in shared memory beside the weights): gate by gate, each load left only
once the previous gate's data came back, eight serial L2 round trips per step at H = 768 (K in two pieces).
tl.arange needs powers of two, so K is a first power-of-two piece and, where that would pad more than
a quarter, a smaller tail piece (768 = 512 + 256, 1536 = 1024 + 512): less shared memory and fewer MMAs on
zeros, and H = 1536 fits on chip (one 2048 piece would not).
The next step's gates_x (forward) and saved gates, cells and dy (backward) are loaded before the step
synchronisation, so their DRAM latency hides behind the wait (single-tile launches).

Variable lengths: sequence b lives at t < lengths[b]; past its end its state is frozen, y is zero,
``cells`` repeats the carried c, and backward passes dh/dc through untouched. Each program carries h
as well as c for its units (registers, or a scratch slice when the batch has several tiles) and
publishes the carried h every step, frozen rows included, so ``gates`` at frozen steps match the
reference too, and h_n is the carried h. Reverse walks t = T-1 … 0 (a row starts at t = lengths[b]-1 from h0).

Layers (fla-org layout): 1. the ``@triton.jit`` kernels; 2. the launchers ``lstm_fwd`` / ``lstm_bwd``
(check, allocate, launch); 3./4. the autograd tie and the public function are the foundation's custom op
(lstm_gpu/ops.py) and ``lstm_gpu.lstm``, which call this module's backend entry points ``unsupported``,
``forward`` and ``backward`` (the contract of lstm_gpu/reference.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import host
from .triton_barrier import barrier_state, barrier_timeout, raise_if_timed_out, step_barrier
from .triton_config import LSTMConfig, choose_config, unsupported_reason

__all__ = ["unsupported", "forward", "backward", "lstm_fwd", "lstm_bwd"]


# ----------------------------------------------------------------------------------------------------
# 1. Kernels
# ----------------------------------------------------------------------------------------------------

# fp32 activations on a GPU: the hardware's approximations, flushing denormals (ex2.approx.ftz, rcp.approx.ftz:
# one MUFU each, relative error about 2^-22). Without .ftz (tl.exp, and div.full for the division) ptxas wraps
# every MUFU in range fixes, denormal scaling before EX2 and a large-denominator check around RCP (FSETP, two
# predicated FMULs, FSEL: 12 instructions a sigmoid, 4 now; sm_90 SASS, triton 3.6). The interpreter has no
# PTX: there the same formula runs on numpy's exp2 and division (the CPU tests check it; only the two
# instructions are the GPU's own).
_APPROX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _exp2_ftz(x):
    if _APPROX:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _rcp_ftz(x):
    if _APPROX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _sigmoid(x):
    if x.dtype == tl.float32:   # σ(x) = 1 / (1 + 2^(-x·log2 e)); x ≪ 0: 1 / inf = 0; x ≫ 0: 1 / 1
        return _rcp_ftz(1.0 + _exp2_ftz(x * -1.4426950408889634))
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = 2σ(2x) - 1: libdevice's tanh does not run in the interpreter
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _row_offsets(o_row, m_row, H, K0, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr):
    """Offsets and mask of the elements K0 … K0 + BLOCK_K - 1 (those < H) of each row (the row starting at
    o_row), as [BB, K] or, with K_SPLIT > 1, split along K as [K_SPLIT, BB, K/K_SPLIT] (the chunks become
    independent tensor-core accumulators)."""
    if K_SPLIT == 1:
        o_k = K0 + tl.arange(0, BLOCK_K)[None, :]
        o_row, m_row = o_row[:, None], m_row[:, None]
    else:
        KC: tl.constexpr = BLOCK_K // K_SPLIT
        o_k = K0 + tl.arange(0, K_SPLIT)[:, None, None] * KC + tl.arange(0, KC)[None, None, :]
        o_row, m_row = o_row[None, :, None], m_row[None, :, None]
    return o_row + o_k, m_row & (o_k < H)


@triton.jit
def _load_rows(p, o_row, m_row, H, K0, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr):
    """One piece of K of each row (see ``_row_offsets``). Data another program wrote: loaded with .cg
    (L2, not a stale L1 line) after the step synchronisation."""
    o, m = _row_offsets(o_row, m_row, H, K0, BLOCK_K, K_SPLIT)
    return tl.load(p + o, mask=m, other=0., cache_modifier=".cg")


# The exchange of h between programs. Generation g is h after g steps (h0 = generation 0); a program reads
# generation s at step s and publishes its units of generation s + 1.
# Through the step counter (plain values): two slots [2, B, H], generation g in slot g % 2. A generation never
# overwrites one a program still reads: s + 2 goes where s was, after every program has published s + 1,
# which each did only after reading s. The counter (triton_barrier.py) says when a generation is complete:
# its release costs a fence, its wait one L2 round trip, and the h load after it another.
# Polled (``polled_h``, 16-bit h; gpu_config's choice where a batch group is one 16-row tile): a slot per
# generation, [T+1, B, H], each written once, filled before the launch with UNWRITTEN (the 16 bits of -0.0,
# the least int16). A program stores its units of h there (a -0.0 as +0.0: no product tells them apart) and
# the readers poll the data itself until no element is UNWRITTEN: no fence, no counter, one L2 round trip
# (all of h's pieces of K polled together, ``_read_h_pieces``), and the check is one integer min per element.
# A 16-bit store is single-copy atomic, so an element is either UNWRITTEN or its final value. The ring costs
# as much memory as y, for the length of the call (beyond ``POLLED_SLOTS_BYTES``, the counter's two slots). Modeled from the sm_90 code (B16 H768 fp16 forward,
# triton 3.6, transposed on 4 warps): 1.17 µs/step, vs 1.78 through the counter (2 warps, rows) and 1.39
# with h in 32-bit words tagged with its generation in two slots (twice the bytes every program reads:
# 2.4 vs 1.3 MB a step; its tag test, an XOR and an OR per word, 900 vs 628 instructions a step). The fence's
# cost is the model's assumption, which the GPU session's "triton-counter" column measures, as it measures
# what the model leaves out: a reader that arrives early re-reads all its elements at every try (the
# counter's poll is one word). Polled piece by piece (3 round trips at H = 768) and with the next step's
# gates_x converted at the end of the step (a DRAM wait with no synchronisation to hide it), the tagged
# kernel modeled 1.78 µs/step.
# The backward's dz exchange polls the same way (``polled_backward``: [T, B, 4H] int16, dz_t in slot s, a -0.0
# of dz, frequent there, stored as +0.0): B16 H768 fp16 backward 3.47 -> 3.08 µs/step modeled, on 8 warps
# (kernels/triton_config.py says why).
UNWRITTEN = tl.constexpr(-32768)


@triton.jit
def _publish_h(p_hx, g, o_b, m_b, o_j, m_j, b_h, B, H, POLLED: tl.constexpr):
    """Store this program's units of h generation g ([BB, HT], the dtype of y): polled, into slot g of the
    ring, as int16 bits; else into slot g % 2."""
    m = m_b[:, None] & m_j[None, :]
    if POLLED:
        p = p_hx + tl.cast(g, tl.int64) * B * H + o_b[:, None] * H + o_j[None, :]
        bits = b_h.to(tl.int16, bitcast=True)
        tl.store(p, tl.where(bits == UNWRITTEN, 0, bits), mask=m)          # -0.0 as +0.0
    else:
        tl.store(p_hx + (g % 2) * B * H + o_b[:, None] * H + o_j[None, :], b_h, mask=m)


@triton.jit
def _late(w):
    """Whether any element of the polled tile ``w`` (int16) is still UNWRITTEN: the least int16, so one min."""
    return tl.min(w) == UNWRITTEN


@triton.jit
def _poll_load(p, o, m):
    """One try at a polled tile: volatile loads (the compiler keeps each one, and they go to L2); a masked
    element counts as written."""
    return tl.load(p + o, mask=m, other=0, volatile=True)


@triton.jit
def _read_h(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE: tl.constexpr, K0, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr,
            POLLED: tl.constexpr, TIMEOUT: tl.constexpr):
    """One piece of K (K0 …) of h generation g for the rows o_b, in the layout of ``_row_offsets``.
    Through the counter: loaded after the step synchronisation. Polled: loaded, then reloaded until no
    element is UNWRITTEN. TIMEOUT > 0 (debug mode): give up after that many polls and set the time-out flag
    *p_flag, as the step counter does."""
    if POLLED:
        p = p_hx + tl.cast(g, tl.int64) * B * H
        o, m = _row_offsets(o_b * H, m_b, H, K0, BLOCK_K, K_SPLIT)
        w = _poll_load(p, o, m)
        if TIMEOUT > 0:
            failed = tl.atomic_add(p_flag, 0, sem="relaxed", scope="gpu")
            spins = 0
            while _late(w) & (failed == 0):
                w = _poll_load(p, o, m)
                spins += 1
                failed = tl.where(spins >= TIMEOUT, 1, failed)
            if spins >= TIMEOUT:
                tl.atomic_xchg(p_flag, 1, sem="relaxed", scope="gpu")
        else:
            while _late(w):
                w = _poll_load(p, o, m)
        b_h = w.to(DTYPE, bitcast=True)
    else:
        b_h = _load_rows(p_hx + (g % 2) * B * H, o_b * H, m_b, H, K0, BLOCK_K, K_SPLIT)
    return b_h


@triton.jit
def _fold_rows(o_b, m_b, H, KF: tl.constexpr, FOLD: tl.constexpr):
    """Where each row of h's operand tile starts, which rows exist, and where along K each row's pieces start:
    the rows o_b themselves (FOLD = 1), or FOLD = 2 (K folded into M, ``_load_w_folded``): 2·BB rows, row
    f·BB + b holding h[b, f·KF …], the half of K that fold f of the weights multiplies."""
    if FOLD == 1:
        return o_b * H, m_b, 0
    else:
        BB: tl.constexpr = o_b.shape[0]
        o_f = tl.arange(0, FOLD * BB) // BB
        o_r = tl.reshape(tl.broadcast_to(o_b[None, :], [FOLD, BB]), [FOLD * BB])
        m_r = tl.reshape(tl.broadcast_to(m_b[None, :], [FOLD, BB]), [FOLD * BB])
        return o_r * H, m_r, (o_f * KF)[:, None]


@triton.jit
def _read_h_pieces(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE: tl.constexpr, KC: tl.constexpr, PIECES: tl.constexpr,
                   POLLED: tl.constexpr, TIMEOUT: tl.constexpr, FOLD: tl.constexpr = 1):
    """All PIECES pieces of K (KC each) of h generation g for the rows o_b, [BB, KC] each (FOLD = 2: [2·BB, KC],
    ``_fold_rows``; the unused ones repeat the first), their loads issued together: one L2 round trip. Polled,
    they are polled together too (every piece reloaded until none is UNWRITTEN): polled piece by piece, each
    piece's first load left only once the previous piece was in, one round trip per piece (3 at H = 768, sm_90
    SASS)."""
    o_r, m_r, k0 = _fold_rows(o_b, m_b, H, PIECES * KC, FOLD)
    if POLLED:
        p = p_hx + tl.cast(g, tl.int64) * B * H
        o0, m0 = _row_offsets(o_r, m_r, H, k0, KC, 1)
        o1, m1 = _row_offsets(o_r, m_r, H, k0 + KC, KC, 1)
        o2, m2 = _row_offsets(o_r, m_r, H, k0 + 2 * KC, KC, 1)
        o3, m3 = _row_offsets(o_r, m_r, H, k0 + 3 * KC, KC, 1)
        w0, w1, w2, w3 = _poll_pieces(p, o0, m0, o1, m1, o2, m2, o3, m3, PIECES)
        if TIMEOUT > 0:
            failed = tl.atomic_add(p_flag, 0, sem="relaxed", scope="gpu")
            spins = 0
            while _late_pieces(w0, w1, w2, w3, PIECES) & (failed == 0):
                w0, w1, w2, w3 = _poll_pieces(p, o0, m0, o1, m1, o2, m2, o3, m3, PIECES)
                spins += 1
                failed = tl.where(spins >= TIMEOUT, 1, failed)
            if spins >= TIMEOUT:
                tl.atomic_xchg(p_flag, 1, sem="relaxed", scope="gpu")
        else:
            while _late_pieces(w0, w1, w2, w3, PIECES):
                w0, w1, w2, w3 = _poll_pieces(p, o0, m0, o1, m1, o2, m2, o3, m3, PIECES)
        return (w0.to(DTYPE, bitcast=True), w1.to(DTYPE, bitcast=True), w2.to(DTYPE, bitcast=True),
                w3.to(DTYPE, bitcast=True))
    else:
        p = p_hx + (g % 2) * B * H
        b_h0 = _load_rows(p, o_r, m_r, H, k0, KC, 1)
        b_h1 = _load_rows(p, o_r, m_r, H, k0 + KC, KC, 1) if PIECES > 1 else b_h0
        b_h2 = _load_rows(p, o_r, m_r, H, k0 + 2 * KC, KC, 1) if PIECES > 2 else b_h0
        b_h3 = _load_rows(p, o_r, m_r, H, k0 + 3 * KC, KC, 1) if PIECES > 3 else b_h0
        return b_h0, b_h1, b_h2, b_h3


@triton.jit
def _poll_pieces(p, o0, m0, o1, m1, o2, m2, o3, m3, PIECES: tl.constexpr):
    """One try at every piece of a polled h (``_poll_load``), all loads in flight at once."""
    w0 = _poll_load(p, o0, m0)
    w1 = _poll_load(p, o1, m1) if PIECES > 1 else w0
    w2 = _poll_load(p, o2, m2) if PIECES > 2 else w0
    w3 = _poll_load(p, o3, m3) if PIECES > 3 else w0
    return w0, w1, w2, w3


@triton.jit
def _late_pieces(w0, w1, w2, w3, PIECES: tl.constexpr):
    """Whether any element of the used pieces (one shape) is still UNWRITTEN: their elementwise minimum, then ONE
    ``_late``, as kernels/triton_stack.py's ``_unwritten4``. A ``_late`` per piece was a reduction across the
    program each (a shared-memory round between two block barriers): 3 a step at B16 H768 fp16 (13 BAR.SYNC in
    the loop; now 7), 8 in the polled backward (now 2), every one on the step's serial path. The elementwise
    minimum re-pairs the 16-bit halves across registers (41 more PRMT a step there, independent of each other),
    so the instruction count rises (501 -> 528 a warp) and the model, one CPI for every instruction, rates it
    0.08 µs slower; a barrier's round costs more than an ALU instruction: the GPU decides. (One tuple reduce of
    all pieces kept 7 BAR.SYNC and 501 instructions, but turned the warp's REDUX into 15 SHFL, 5 levels deep.)"""
    w = w0
    if PIECES > 1:
        w = tl.minimum(w, w1)
    if PIECES > 2:
        w = tl.minimum(w, w2)
    if PIECES > 3:
        w = tl.minimum(w, w3)
    return _late(w)


@triton.jit
def _h_w(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE: tl.constexpr, b_wi, b_wf, b_wg, b_wo, b_ti, b_tf, b_tg, b_to,
         BLOCK_K: tl.constexpr, K_TAIL: tl.constexpr, TAIL_AFTER: tl.constexpr, K_SPLIT: tl.constexpr,
         POLLED: tl.constexpr, TIMEOUT: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """h_{t-1} · W_gateᵀ of the four gates ([BB, HT] each), h_{t-1} being generation g (``_read_h``) of the rows
    o_b, K in its pieces. A tail piece (K_TAIL > 0, tl.dot only) is cut in as many chunks as the first, so its
    products add into the same per-chunk accumulators and one sum over the chunks serves both (summed apart:
    64 shuffles and 280 instructions more per step per warp at B16 H768 fp16, sm_90, triton 3.6). TAIL_AFTER
    (both h tiles staged at once would not fit beside the weights: H = 1536 took 241 KB with triton 3.9): the
    tail of h is read only once the first piece's products are summed, so its staging reuses the first one's
    (kept unsummed until then, the four accumulators spilled 10-14 accesses per step)."""
    b_h = _read_h(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE, 0, BLOCK_K, K_SPLIT, POLLED, TIMEOUT)
    if K_TAIL > 0 and not TAIL_AFTER:
        b_ht = _read_h(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE, BLOCK_K, K_TAIL, K_SPLIT, POLLED, TIMEOUT)
        return (_chunk_sum(_dot(b_h, b_wi, PRECISION) + _dot(b_ht, b_ti, PRECISION)),
                _chunk_sum(_dot(b_h, b_wf, PRECISION) + _dot(b_ht, b_tf, PRECISION)),
                _chunk_sum(_dot(b_h, b_wg, PRECISION) + _dot(b_ht, b_tg, PRECISION)),
                _chunk_sum(_dot(b_h, b_wo, PRECISION) + _dot(b_ht, b_to, PRECISION)))
    b_ri, b_rf = _hw(b_h, b_wi, USE_DOT, PRECISION), _hw(b_h, b_wf, USE_DOT, PRECISION)
    b_rg, b_ro = _hw(b_h, b_wg, USE_DOT, PRECISION), _hw(b_h, b_wo, USE_DOT, PRECISION)
    if K_TAIL > 0:
        b_h = _read_h(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE, BLOCK_K, K_TAIL, K_SPLIT, POLLED, TIMEOUT)
        b_ri += _hw(b_h, b_ti, USE_DOT, PRECISION)
        b_rf += _hw(b_h, b_tf, USE_DOT, PRECISION)
        b_rg += _hw(b_h, b_tg, USE_DOT, PRECISION)
        b_ro += _hw(b_h, b_to, USE_DOT, PRECISION)
    return b_ri, b_rf, b_rg, b_ro


@triton.jit
def _load_w_gate(p_w, gate, i_p, H, K0, HT: tl.constexpr, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr,
                 USE_DOT: tl.constexpr, ACC: tl.constexpr, BACKWARD: tl.constexpr):
    """One gate's block of W_hh for this program's units u and the piece k = K0 … K0 + BLOCK_K - 1 of K, to
    keep on chip for the whole launch: forward the rows W[gate·H + u, k] (h · W_gateᵀ), backward the
    columns W[gate·H + k, u] (dz_gate · W_gate).
    tl.dot: as [K_SPLIT, K/K_SPLIT, HT] (k, u) (or [K, HT] when K_SPLIT = 1) in the weights' dtype
    (16-bit stays 16-bit for the tensor cores). Broadcast path: as [HT, K] (u, k), upcast once to the
    accumulation dtype."""
    o_j = i_p * HT + tl.arange(0, HT)
    if USE_DOT and K_SPLIT > 1:
        KC: tl.constexpr = BLOCK_K // K_SPLIT
        o_k = K0 + tl.arange(0, K_SPLIT)[:, None, None] * KC + tl.arange(0, KC)[None, :, None]
        o_u = o_j[None, None, :]
    elif USE_DOT:
        o_k = K0 + tl.arange(0, BLOCK_K)[:, None]
        o_u = o_j[None, :]
    else:
        o_k = K0 + tl.arange(0, BLOCK_K)[None, :]
        o_u = o_j[:, None]
    if BACKWARD:
        o_w = (gate * H + o_k) * H + o_u
    else:
        o_w = (gate * H + o_u) * H + o_k
    b_w = tl.load(p_w + o_w, mask=(o_u < H) & (o_k < H), other=0.)
    return b_w if USE_DOT else b_w.to(ACC)


@triton.jit
def _dot(b_a, b_w, PRECISION: tl.constexpr):
    """a · w on the tensor cores (in IEEE fp32: FMAs), fp32 accumulation (fp64 for fp64); with K in chunks
    ([K_SPLIT, BB, K/K_SPLIT] · [K_SPLIT, K/K_SPLIT, HT]) one independent accumulator per chunk:
    [K_SPLIT, BB, HT]."""
    if b_w.dtype == tl.float64:
        return tl.dot(b_a.to(b_w.dtype), b_w, input_precision="ieee", out_dtype=tl.float64)
    else:
        return tl.dot(b_a.to(b_w.dtype), b_w, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _dot_acc(b_a, b_w, b_acc, PRECISION: tl.constexpr):
    """b_acc + a · w on the tensor cores, fp32 accumulation (16-bit or tf32 operands)."""
    return tl.dot(b_a.to(b_w.dtype), b_w, acc=b_acc, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _chunk_sum(b_z):
    """The per-chunk products of ``_dot`` ([K_SPLIT, BB, HT], the chunks on different warps) summed over the
    chunks: [BB, HT]. The chunks are moved to the last axis first (one exchange through shared memory), then
    halved by split-and-add in registers. Summed along axis 0 instead (``tl.sum(b_z, 0)``), the result was the
    slice of the dot's layout, the same [BB, HT] tile on every warp: every saved tensor the backward combines with
    dh was converted into that layout through shared memory every step, and every warp ran the same math (B16
    H768 fp16 backward, sm_90, triton 3.6: 15 convert_layout, 31 BAR.SYNC, 972 instructions a step; now 1, 8,
    692)."""
    if len(b_z.shape) == 3:
        KS: tl.constexpr = b_z.shape[0]
        tl.static_assert(KS <= 16, "at most 16 chunks")
        if KS == 1:
            return tl.sum(b_z, 0)
        b = tl.permute(b_z, (1, 2, 0))                      # [BB, HT, KS]
        if KS >= 16:
            b = _halve(b)
        if KS >= 8:
            b = _halve(b)
        if KS >= 4:
            b = _halve(b)
        b0, b1 = tl.split(b)
        return b0 + b1
    else:
        return b_z


@triton.jit
def _halve(b):
    """[R, C, 2n] -> [R, C, n]: the last axis's neighbours added."""
    b0, b1 = tl.split(tl.reshape(b, [b.shape[0], b.shape[1], b.shape[2] // 2, 2]))
    return b0 + b1


@triton.jit
def _hw(b_h, b_w, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """h · W_gateᵀ for one gate: [BB, HT]. tl.dot: one tensor-core product per K chunk (independent
    accumulators, so the chain of dependent MMAs is K/K_SPLIT/16 long, not K/16), summed over the chunks.
    Broadcast path: a register multiply and a sum along K (fp64, fp32-ieee, tiny slices)."""
    if USE_DOT:
        return _chunk_sum(_dot(b_h, b_w, PRECISION))
    else:
        return tl.sum(b_h.to(b_w.dtype)[:, None, :] * b_w[None, :, :], 2)


@triton.jit
def _load_w_fused(p_w, i_p, H, K0, HT: tl.constexpr, KC: tl.constexpr):
    """Forward, fused gates: the rows of W_hh for this program's units, the four gates side by side, for
    the piece k = K0 … K0 + KC - 1 of K: [KC, 4·HT], column 4u + gate (u the unit, gate 0..3 = i, f, g, o),
    so one tl.dot gives all four gates and ``_gates_of`` takes them apart."""
    o_c = tl.arange(0, 4 * HT)
    o_u = i_p * HT + o_c // 4
    o_k = K0 + tl.arange(0, KC)[:, None]
    o_w = ((o_c % 4) * H + o_u)[None, :] * H + o_k
    return tl.load(p_w + o_w, mask=(o_u < H)[None, :] & (o_k < H), other=0.)


@triton.jit
def _load_w_folded(p_w, i_p, H, K0, HT: tl.constexpr, KC: tl.constexpr, KF: tl.constexpr, FOLD: tl.constexpr):
    """Forward, K folded into M (FOLD = 2): the rows of W_hh for this program's units, as the A operand
    [FOLD·4·HT, KC] of the transposed product: row (f, gate, u) holds W_hh[gate·H + u, f·KF + K0 …], the piece
    at K0 of fold f's half of K (KF long). M = 2·4·16 = 128 is two warpgroups, each multiplying one half of K,
    and the operand, put ``_in_registers``, stays there: K/2 · 64 rows · 2 bytes over 128 threads, H/8
    registers a thread (96 at H = 768)."""
    o_m = tl.arange(0, FOLD * 4 * HT)
    o_u = i_p * HT + o_m % HT
    o_k = (o_m // (4 * HT) * KF + K0)[:, None] + tl.arange(0, KC)[None, :]
    o_w = ((o_m // HT) % 4 * H + o_u)[:, None] * H + o_k
    return _in_registers(tl.load(p_w + o_w, mask=(o_u < H)[:, None] & (o_k < H), other=0.))


@triton.jit
def _in_registers(b_w):
    """b_w · I: the same values (exact: one product by 1.0 each, fp32 accumulation), now in the layout of a
    warpgroup MMA's result, which the compiler lets a later tl.dot read as its A operand straight from
    registers (the pattern attention kernels use for P). Loaded, the operand goes to shared memory and every
    HGMMA of every step reads it back from there: at B16 H768 fp16, 96 KB a step per SM, the step's shared-
    memory floor (sm_90 SASS, triton 3.6)."""
    o = tl.arange(0, b_w.shape[1])
    return tl.dot(b_w, (o[:, None] == o[None, :]).to(b_w.dtype), out_dtype=tl.float32).to(b_w.dtype)


@triton.jit
def _unfold(b_z, BB: tl.constexpr, HT: tl.constexpr):
    """The folded product [2·4·HT, 2·BB] (rows (f, gate, u), columns (f', b): fold f of W times fold f' of h)
    -> [BB, 4·HT], column 4u + gate as ``_gates_of`` takes it: the two diagonal blocks (f' = f) added, the
    other two (products of mismatched halves of K) dropped. The select runs in registers (f' lies in each
    thread's registers), then one exchange through shared memory brings both folds and the four gates of a
    unit to one thread."""
    b_z = tl.permute(tl.reshape(b_z, [2, 4, HT, 2, BB]), (4, 2, 1, 0, 3))     # [b, u, gate, f, f']
    b_0, b_1 = tl.split(b_z)                                                 # f' = 0, 1
    b_d0, b_d1 = tl.split(tl.where((tl.arange(0, 2) == 0)[None, None, None, :], b_0, b_1))   # f' = f
    return tl.reshape(b_d0 + b_d1, [BB, 4 * HT])


@triton.jit
def _opaque_zero(R: tl.constexpr, C: tl.constexpr, T):
    """[R, C] zeros the compiler cannot prove zero: column j is j · (0 · T). From a literal zero, Triton's combine
    pass folds dot(a₁, w₁) + z into dot(a₁, w₁, acc=z), chaining every piece of K into one accumulator (a chain
    of 64 dependent MMAs at H = 1024 instead of 16, sm_90 SASS, triton 3.6); from one scalar (zeros · T), ptxas
    copied it into each accumulator's registers every step (4 moves per MMA tile, 23-32 per step per warp);
    one value per column lives in registers of its own, read by the MMAs in place."""
    return (tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]).to(tl.float32) * (0. * T)


@triton.jit
def _gates_of(b_z, BB: tl.constexpr, HT: tl.constexpr):
    """[BB, 4·HT] with column 4u + gate -> the four gates' [BB, HT] (i, f, g, o)."""
    b_ig, b_fo = tl.split(tl.reshape(b_z, [BB, HT, 2, 2]))     # gate % 2 == 0: i, g; == 1: f, o
    b_i, b_g = tl.split(b_ig)
    b_f, b_o = tl.split(b_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def _piece(b_a, b_w, b_zero, PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr):
    """One piece of K of a fused product, b_zero + a · w ([BB, 4·HT]), or TRANSPOSED its transpose
    b_zeroᵀ + wᵀ · aᵀ ([4·HT, BB]): M = 4·HT = 64 fills a warpgroup MMA (HGMMA on Hopper), which reads w and
    aᵀ from shared memory once per warpgroup, where the [BB, 4·HT] product's mma.sync has every warp
    ldmatrix all of a and its quarter of w every step (sm_90 SASS, triton 3.6; bench/static.py counts it)."""
    if TRANSPOSED:
        return tl.dot(tl.trans(b_w), tl.trans(b_a.to(b_w.dtype)), acc=tl.trans(b_zero), input_precision=PRECISION,
                      out_dtype=tl.float32)
    else:
        return _dot_acc(b_a, b_w, b_zero, PRECISION)


@triton.jit
def _folded_gates(b_a0, b_a1, b_a2, b_a3, b_w0, b_w1, b_w2, b_w3, PIECES: tl.constexpr):
    """K folded into M (``_load_w_folded``): Σ over the pieces of w_k · a_kᵀ, [2·4·HT, 2·BB], one accumulator
    (a separate one per piece cost 16 registers each and, at 254 a thread, a move per element to start it:
    +72 instructions a step, sm_90 SASS, triton 3.6), then ``_unfold`` and split into the gates."""
    b_z = tl.dot(b_w0, tl.trans(b_a0.to(b_w0.dtype)), out_dtype=tl.float32)
    if PIECES > 1:
        b_z += tl.dot(b_w1, tl.trans(b_a1.to(b_w1.dtype)), out_dtype=tl.float32)
    if PIECES > 2:
        b_z += tl.dot(b_w2, tl.trans(b_a2.to(b_w2.dtype)), out_dtype=tl.float32)
    if PIECES > 3:
        b_z += tl.dot(b_w3, tl.trans(b_a3.to(b_w3.dtype)), out_dtype=tl.float32)
    BB: tl.constexpr = b_a0.shape[0] // 2
    HT: tl.constexpr = b_w0.shape[0] // 8
    return _gates_of(_unfold(b_z, BB, HT), BB, HT)


@triton.jit
def _fused_gates(b_a0, b_a1, b_a2, b_a3, b_w0, b_w1, b_w2, b_w3, b_zero, PIECES: tl.constexpr,
                 PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Σ over the PIECES pieces of K of a_k · w_k (``_piece``: each its own accumulator, so the chain of
    dependent MMAs is one piece long; added in registers, same layout), split into the gates i, f, g, o
    ([BB, HT] each; the unused pieces' arguments repeat the first and are never read)."""
    b_z = _piece(b_a0, b_w0, b_zero, PRECISION, TRANSPOSED)
    if PIECES > 1:
        b_z += _piece(b_a1, b_w1, b_zero, PRECISION, TRANSPOSED)
    if PIECES > 2:
        b_z += _piece(b_a2, b_w2, b_zero, PRECISION, TRANSPOSED)
    if PIECES > 3:
        b_z += _piece(b_a3, b_w3, b_zero, PRECISION, TRANSPOSED)
    if TRANSPOSED:
        b_z = tl.trans(b_z)
    return _gates_of(b_z, b_a0.shape[0], b_w0.shape[1] // 4)


@triton.jit
def _h_w_fused(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE: tl.constexpr, b_w0, b_w1, b_w2, b_w3, b_zero, KC: tl.constexpr,
               PIECES: tl.constexpr, POLLED: tl.constexpr, TIMEOUT: tl.constexpr, PRECISION: tl.constexpr,
               TRANSPOSED: tl.constexpr, FOLD: tl.constexpr = 1):
    """h_{t-1} · W_hhᵀ for the four gates at once, K in PIECES pieces of KC: one tl.dot per piece into
    [BB, 4·HT], each piece its own accumulator (the chain of dependent MMAs is KC/16), the pieces added in
    registers (same layout: no exchange between warps), then split into the gates. FOLD = 2: K folded into M,
    the weights in registers (``_folded_gates``)."""
    b_h0, b_h1, b_h2, b_h3 = _read_h_pieces(p_hx, g, o_b, m_b, B, H, p_flag, DTYPE, KC, PIECES, POLLED, TIMEOUT,
                                            FOLD)
    if FOLD > 1:
        b_i, b_f, b_g, b_o = _folded_gates(b_h0, b_h1, b_h2, b_h3, b_w0, b_w1, b_w2, b_w3, PIECES)
    else:
        b_i, b_f, b_g, b_o = _fused_gates(b_h0, b_h1, b_h2, b_h3, b_w0, b_w1, b_w2, b_w3, b_zero, PIECES, PRECISION,
                                          TRANSPOSED)
    return b_i, b_f, b_g, b_o


@triton.jit
def _batch_group(B, BG, GROUPED: tl.constexpr):
    """(group index q, first row, end row) of this program's batch group: program_id(1) picks the group of
    BG rows. With one group the rows are [0, B) and the index math folds away at compile time."""
    i_q = tl.program_id(1)
    if GROUPED:
        return i_q, i_q * BG, tl.minimum(B, i_q * BG + BG)
    else:
        return i_q, 0, B


@triton.jit
def _tile_rows(r0, b_end, BLOCK_B: tl.constexpr, FULL: tl.constexpr):
    """The batch rows of the tile that starts at row r0, and which of them exist (< b_end). FULL (every tile of
    the launch is whole, ``_full_tiles``): a constant mask, so the loads and stores under it carry no predicate.
    A predicated load first sets its destination registers to its ``other`` (a CS2R per pair) before it may
    issue: 47 of the 561 instructions of a B16 H768 fp16 forward step, in front of the poll's loads of h, and
    ~90 of the backward's 692 (sm_90 SASS, triton 3.6)."""
    o_b = r0 + tl.arange(0, BLOCK_B)
    m_b = o_b < b_end
    if FULL:
        m_b = tl.full([BLOCK_B], 1, tl.int1)
    return o_b, m_b


@triton.jit
def _load_gx(p_gx, t, T, i_p, o_b, m_b, B, H, HT: tl.constexpr, BLOCK_B: tl.constexpr):
    """gates_x[t] for one tile, the four gates of this program's units ([BB, HT] each, in gates_x's dtype:
    ``_fwd_tile`` converts them where it adds them); zeros for a t outside 0..T-1 (the prefetch after the last
    step). It depends on no other program, so the single-tile loop issues it for step t+1 before the step
    synchronisation of step t: its DRAM latency hides behind the wait. Converted here, at the load, the
    conversion waited for DRAM right after it in the SASS: on the polled path, with no wait after it, that
    was a DRAM round of its own each step (sm_90, triton 3.6, B16 H768 fp16: 0.39 µs/step modeled)."""
    o_j = i_p * HT + tl.arange(0, HT)
    o_t = tl.zeros([BLOCK_B], dtype=tl.int32) + t
    m = (m_b & (o_t >= 0) & (o_t < T))[:, None] & (o_j < H)[None, :]
    p = p_gx + ((tl.cast(t, tl.int64) * B + o_b) * (4 * H))[:, None] + o_j[None, :]   # rows of [T, B, 4H]
    return (tl.load(p, mask=m, other=0.), tl.load(p + H, mask=m, other=0.),
            tl.load(p + 2 * H, mask=m, other=0.), tl.load(p + 3 * H, mask=m, other=0.))


@triton.jit
def _fwd_tile(p_hx, p_y, b_len, p_gates, p_cells, b_ri, b_rf, b_rg, b_ro, b_xi, b_xf, b_xg, b_xo, b_c, b_hc,
              s, t, i_p, o_b, m_b, B, H, SAVE: tl.constexpr, HT: tl.constexpr, POLLED: tl.constexpr):
    """Step s (time t) for one batch tile, given h_{t-1} · W_gateᵀ (b_r*: ``_h_w`` of generation s for its rows),
    gates_x[t] (b_x*), its rows' lengths and its carried c and h (b_hc: this program's units of generation s):
    returns the new c (accumulation dtype) and the new carried h, which it publishes as generation s + 1."""
    ACC = b_c.dtype
    o_j = i_p * HT + tl.arange(0, HT)                               # this program's hidden units
    m_j = o_j < H
    m_bj = m_b[:, None] & m_j[None, :]
    b_alive = (t < b_len)[:, None]                                  # [BB, 1]

    # z_t = gates_x[t] + h_{t-1} · W_hhᵀ, gate by gate, for this program's units
    b_zi = b_xi.to(ACC) + b_ri.to(ACC)
    b_zf = b_xf.to(ACC) + b_rf.to(ACC)
    b_zg = b_xg.to(ACC) + b_rg.to(ACC)
    b_zo = b_xo.to(ACC) + b_ro.to(ACC)

    b_i, b_f, b_g, b_o = _sigmoid(b_zi), _sigmoid(b_zf), _tanh(b_zg), _sigmoid(b_zo)
    b_c_new = b_f * b_c + b_i * b_g                                 # c_t = f ⊙ c_{t-1} + i ⊙ g
    b_h_new = (b_o * _tanh(b_c_new)).to(b_hc.dtype)                 # h_t = o ⊙ tanh(c_t)
    b_c_new = tl.where(b_alive, b_c_new, b_c)                       # frozen outside the row's steps
    b_hc = tl.where(b_alive, b_h_new, b_hc)
    _publish_h(p_hx, s + 1, o_b, m_b, o_j, m_j, b_hc, B, H, POLLED)   # first: the other programs wait for it

    o_bh = (t.to(tl.int64) * B + o_b) * H                           # row offsets into [T, B, H]
    tl.store(p_y + o_bh[:, None] + o_j[None, :], tl.where(b_alive, b_h_new, 0.), mask=m_bj)   # zero past the end
    if SAVE:
        p_g = p_gates + ((t.to(tl.int64) * B + o_b) * (4 * H))[:, None] + o_j[None, :]   # gate k at k·H + j
        tl.store(p_g, b_i, mask=m_bj)
        tl.store(p_g + H, b_f, mask=m_bj)
        tl.store(p_g + 2 * H, b_g, mask=m_bj)
        tl.store(p_g + 3 * H, b_o, mask=m_bj)
        tl.store(p_cells + o_bh[:, None] + o_j[None, :], b_c_new, mask=m_bj)
    return b_c_new, b_hc


@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_kernel(
    # pointers (all contiguous)
    p_gx,        # [T, B, 4H] input gates x·W_ihᵀ + b, gate order i, f, g, o
    p_h0,        # [B, H]
    p_c0,        # [B, H]
    p_w,         # [4H, H] W_hh
    p_len,       # [B] int32, sequence lengths (T for all when none were given)
    p_y,         # [T, B, H] out: h_t, zero past a row's end
    p_hn,        # [B, H] out
    p_cn,        # [B, H] out
    p_gates,     # [T, B, 4H] out (accumulation dtype): activated i, f, g, o   (SAVE only)
    p_cells,     # [T, B, H] out (accumulation dtype): c_t                      (SAVE only)
    p_hx,        # [2, B, H] how programs exchange h: generation g in slot g % 2, h0 in slot 0;
                 # POLLED: [T+1, B, H] int16, generation g in slot g, UNWRITTEN until then
    p_cs,        # [B, H] accumulation-dtype scratch for c when the batch needs several tiles
    p_hs,        # [B, H] scratch for the carried h (dtype of y), likewise
    p_bar,       # [2·groups] int64, zero: each batch group's step counter and time-out flag
    # sizes
    T, B,
    H: tl.constexpr,     # a constant: every offset inside a row becomes an immediate (fewer address registers)
    BG,          # batch rows per batch group (program_id(1) picks the group); B when there is one
    # meta-parameters
    REVERSE: tl.constexpr, SAVE: tl.constexpr,
    HT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, ONE_TILE: tl.constexpr,
    FULL: tl.constexpr,          # every batch tile has BLOCK_B rows (``_full_tiles``): no row masks
    K_SPLIT: tl.constexpr,       # tl.dot: K chunks, each an independent accumulator
    K_TAIL: tl.constexpr,        # tl.dot: a second, smaller piece of K after BLOCK_K (0: none), in K_SPLIT chunks too
    TAIL_AFTER: tl.constexpr,    # read h's tail piece only after the first piece's products (see ``_h_w``)
    PIECES: tl.constexpr,        # tl.dot, fused gates: K as PIECES pieces of BLOCK_K, one [BB, 4·HT] dot each (0: off)
    TRANSPOSED: tl.constexpr,    # fused gates computed transposed, [4·HT, BB] = W · hᵀ (wgmma on Hopper)
    GROUPED: tl.constexpr,       # more than one batch group (program_id(1) > 0 exists)
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    POLLED: tl.constexpr,        # h exchanged in write-once slots the readers poll (16-bit h): no step counter
    NUM_PROGRAMS: tl.constexpr,  # programs of one batch group: they meet at the group's step counter
    ACC: tl.constexpr,
    TIMEOUT: tl.constexpr,       # polls before giving up (debug mode); 0 = wait forever
    FOLD: tl.constexpr = 1,      # fused, 16-bit: 2 = K folded into M, the weights in registers (``_load_w_folded``)
):
    i_p = tl.program_id(0)
    i_q, row0, b_end = _batch_group(B, BG, GROUPED)                 # this program's rows: [row0, b_end)
    num_bt = tl.cdiv(b_end - row0, BLOCK_B)
    p_flag = p_bar + 2 * i_q + 1                                    # the group's time-out flag
    KS: tl.constexpr = K_SPLIT if USE_DOT else 1                    # h in K chunks for the tensor cores

    # This program's rows of W_hh, loaded ONCE and kept on chip for all T steps: fused (PIECES > 0), the four
    # gates side by side in PIECES pieces of K (b_wi … b_wo hold pieces 0 … 3); else gate by gate.
    if FOLD > 1:        # the pieces of each half of K: [2·4·HT, BLOCK_K] each, in registers
        KF: tl.constexpr = PIECES * BLOCK_K
        b_wi = _load_w_folded(p_w, i_p, H, 0, HT, BLOCK_K, KF, FOLD)
        b_wf = _load_w_folded(p_w, i_p, H, BLOCK_K, HT, BLOCK_K, KF, FOLD) if PIECES > 1 else b_wi
        b_wg = _load_w_folded(p_w, i_p, H, 2 * BLOCK_K, HT, BLOCK_K, KF, FOLD) if PIECES > 2 else b_wi
        b_wo = _load_w_folded(p_w, i_p, H, 3 * BLOCK_K, HT, BLOCK_K, KF, FOLD) if PIECES > 3 else b_wi
    elif PIECES > 0:
        b_wi = _load_w_fused(p_w, i_p, H, 0, HT, BLOCK_K)
        b_wf = _load_w_fused(p_w, i_p, H, BLOCK_K, HT, BLOCK_K) if PIECES > 1 else b_wi
        b_wg = _load_w_fused(p_w, i_p, H, 2 * BLOCK_K, HT, BLOCK_K) if PIECES > 2 else b_wi
        b_wo = _load_w_fused(p_w, i_p, H, 3 * BLOCK_K, HT, BLOCK_K) if PIECES > 3 else b_wi
    else:
        b_wi = _load_w_gate(p_w, 0, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, False)
        b_wf = _load_w_gate(p_w, 1, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, False)
        b_wg = _load_w_gate(p_w, 2, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, False)
        b_wo = _load_w_gate(p_w, 3, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, False)
    # The pieces' accumulators start from zeros the compiler cannot prove (``_opaque_zero`` says why).
    b_zero = _opaque_zero(BLOCK_B, 4 * HT, T)
    if K_TAIL > 0 and PIECES == 0:      # K beyond BLOCK_K, a smaller piece: H = 1536 as 1024 + 512 fits, 2048 not
        b_ti = _load_w_gate(p_w, 0, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, False)
        b_tf = _load_w_gate(p_w, 1, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, False)
        b_tg = _load_w_gate(p_w, 2, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, False)
        b_to = _load_w_gate(p_w, 3, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, False)
    else:               # no tail: placeholders, never read
        b_ti, b_tf, b_tg, b_to = b_wi, b_wf, b_wg, b_wo

    o_j = i_p * HT + tl.arange(0, HT)
    m_j = o_j < H
    if ONE_TILE:                                                    # c and the carried h live in registers
        o_b, m_b = _tile_rows(row0, b_end, BLOCK_B, FULL)
        m_bj = m_b[:, None] & m_j[None, :]
        o_bj = o_b[:, None] * H + o_j[None, :]
        b_c = tl.load(p_c0 + o_bj, mask=m_bj, other=0.).to(ACC)
        b_hc = tl.load(p_h0 + o_bj, mask=m_bj, other=0.)
        b_len = tl.load(p_len + o_b, mask=m_b, other=0)            # lengths: loaded once
        b_xi, b_xf, b_xg, b_xo = _load_gx(p_gx, T - 1 if REVERSE else 0, T, i_p, o_b, m_b, B, H, HT, BLOCK_B)
        for s in tl.range(T, num_stages=1):                         # num_stages=1: no load hoisted above the wait
            t = T - 1 - s if REVERSE else s
            t_next = t - 1 if REVERSE else t + 1
            if POLLED:      # no wait after the step: the next step's gates_x leave before this step's poll
                b_nxi, b_nxf, b_nxg, b_nxo = _load_gx(p_gx, t_next, T, i_p, o_b, m_b, B, H, HT, BLOCK_B)
            if PIECES > 0:
                b_ri, b_rf, b_rg, b_ro = _h_w_fused(p_hx, s, o_b, m_b, B, H, p_flag, b_hc.dtype, b_wi, b_wf, b_wg,
                                                    b_wo, b_zero, BLOCK_K, PIECES, POLLED, TIMEOUT, PRECISION,
                                                    TRANSPOSED, FOLD)
            else:
                b_ri, b_rf, b_rg, b_ro = _h_w(p_hx, s, o_b, m_b, B, H, p_flag, b_hc.dtype, b_wi, b_wf, b_wg, b_wo,
                                              b_ti, b_tf, b_tg, b_to, BLOCK_K, K_TAIL, TAIL_AFTER, KS, POLLED,
                                              TIMEOUT, USE_DOT, PRECISION)
            b_c, b_hc = _fwd_tile(p_hx, p_y, b_len, p_gates, p_cells, b_ri, b_rf, b_rg, b_ro, b_xi, b_xf, b_xg, b_xo,
                                  b_c, b_hc, s, t, i_p, o_b, m_b, B, H, SAVE, HT, POLLED)
            if POLLED:
                b_xi, b_xf, b_xg, b_xo = b_nxi, b_nxf, b_nxg, b_nxo
            else:           # the next step's, before the wait
                b_xi, b_xf, b_xg, b_xo = _load_gx(p_gx, t_next, T, i_p, o_b, m_b, B, H, HT, BLOCK_B)
                step_barrier(p_bar + 2 * i_q, s, NUM_PROGRAMS, TIMEOUT)
        tl.store(p_cn + o_bj, b_c.to(p_cn.dtype.element_ty), mask=m_bj)
        tl.store(p_hn + o_bj, b_hc, mask=m_bj)                      # h_n: the carried h
    else:                                                           # c and h live in scratch slices
        for i_bt in range(num_bt):
            o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
            m_bj = m_b[:, None] & m_j[None, :]
            o_bj = o_b[:, None] * H + o_j[None, :]
            tl.store(p_cs + o_bj, tl.load(p_c0 + o_bj, mask=m_bj, other=0.).to(ACC), mask=m_bj)
            tl.store(p_hs + o_bj, tl.load(p_h0 + o_bj, mask=m_bj, other=0.), mask=m_bj)
        for s in tl.range(T, num_stages=1):
            t = T - 1 - s if REVERSE else s
            for i_bt in range(num_bt):
                o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
                m_bj = m_b[:, None] & m_j[None, :]
                o_bj = o_b[:, None] * H + o_j[None, :]
                tl.debug_barrier()
                b_c = tl.load(p_cs + o_bj, mask=m_bj, other=0.)
                b_hc = tl.load(p_hs + o_bj, mask=m_bj, other=0.)
                b_len = tl.load(p_len + o_b, mask=m_b, other=0)
                b_xi, b_xf, b_xg, b_xo = _load_gx(p_gx, t, T, i_p, o_b, m_b, B, H, HT, BLOCK_B)
                if PIECES > 0:
                    b_ri, b_rf, b_rg, b_ro = _h_w_fused(p_hx, s, o_b, m_b, B, H, p_flag, b_hc.dtype, b_wi,
                                                        b_wf, b_wg, b_wo, b_zero, BLOCK_K, PIECES, POLLED, TIMEOUT,
                                                        PRECISION, TRANSPOSED, FOLD)
                else:
                    b_ri, b_rf, b_rg, b_ro = _h_w(p_hx, s, o_b, m_b, B, H, p_flag, b_hc.dtype, b_wi, b_wf,
                                                  b_wg, b_wo, b_ti, b_tf, b_tg, b_to, BLOCK_K, K_TAIL, TAIL_AFTER, KS,
                                                  POLLED, TIMEOUT, USE_DOT, PRECISION)
                b_c, b_hc = _fwd_tile(p_hx, p_y, b_len, p_gates, p_cells, b_ri, b_rf, b_rg, b_ro, b_xi, b_xf, b_xg,
                                      b_xo, b_c, b_hc, s, t, i_p, o_b, m_b, B, H, SAVE, HT, POLLED)
                tl.store(p_cs + o_bj, b_c, mask=m_bj)
                tl.store(p_hs + o_bj, b_hc, mask=m_bj)
            if not POLLED:
                step_barrier(p_bar + 2 * i_q, s, NUM_PROGRAMS, TIMEOUT)
        tl.debug_barrier()
        for i_bt in range(num_bt):
            o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
            m_bj = m_b[:, None] & m_j[None, :]
            o_bj = o_b[:, None] * H + o_j[None, :]
            tl.store(p_cn + o_bj, tl.load(p_cs + o_bj, mask=m_bj).to(p_cn.dtype.element_ty), mask=m_bj)
            tl.store(p_hn + o_bj, tl.load(p_hs + o_bj, mask=m_bj), mask=m_bj)


@triton.jit
def _bwd_saved(p_dy, p_gates, p_cells, p_c0, t, T, i_p, o_b, m_b, B, H, REVERSE: tl.constexpr, HT: tl.constexpr,
               BLOCK_B: tl.constexpr, ACC: tl.constexpr):
    """What backward step t reads of its own units ([BB, HT] each): the saved gates i, f, g, o, c_t, c_{t-1}
    (c0 before the first step) and dy_t; zeros for a t outside 0..T-1 (the prefetch after the last step).
    None of it depends on another program, so the single-tile loop issues it for the next step before the
    step synchronisation: its DRAM latency hides behind the wait."""
    o_j = i_p * HT + tl.arange(0, HT)
    o_t = tl.zeros([BLOCK_B], dtype=tl.int32) + t
    m_bj = (m_b & (o_t >= 0) & (o_t < T))[:, None] & (o_j < H)[None, :]
    o_bh = (tl.cast(t, tl.int64) * B + o_b) * H
    p_g = p_gates + ((tl.cast(t, tl.int64) * B + o_b) * (4 * H))[:, None] + o_j[None, :]
    b_i = tl.load(p_g, mask=m_bj, other=0.)
    b_f = tl.load(p_g + H, mask=m_bj, other=0.)
    b_g = tl.load(p_g + 2 * H, mask=m_bj, other=0.)
    b_o = tl.load(p_g + 3 * H, mask=m_bj, other=0.)
    b_ct = tl.load(p_cells + o_bh[:, None] + o_j[None, :], mask=m_bj, other=0.)
    prev = t + 1 if REVERSE else t - 1                              # c_{t-1}: cells[prev], or c0
    if (prev >= 0) & (prev < T):
        o_bp = (tl.cast(prev, tl.int64) * B + o_b) * H
        b_cp = tl.load(p_cells + o_bp[:, None] + o_j[None, :], mask=m_bj, other=0.)
    else:
        b_cp = tl.load(p_c0 + o_b[:, None] * H + o_j[None, :], mask=m_bj, other=0.)
    b_dy = tl.load(p_dy + o_bh[:, None] + o_j[None, :], mask=m_bj, other=0.).to(ACC)
    return b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy


@triton.jit
def _exchanged(b, p_zx, X: tl.constexpr):
    """dz as the exchange holds it: in X (16 bits); a polled exchange (p_zx int16) holds X's bits, a -0.0
    as +0.0 (UNWRITTEN marks what is not yet written)."""
    if p_zx.dtype.element_ty == tl.int16:
        bits = b.to(X).to(tl.int16, bitcast=True)
        return tl.where(bits == UNWRITTEN, 0, bits)
    else:
        return b.to(X)


@triton.jit
def _bwd_tile_dz(b_len, p_dgates, p_zx, b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy, b_dh, b_dc, t, i_p, o_b, m_b, B, H,
                 HT: tl.constexpr, LOW_EXCHANGE: tl.constexpr, X: tl.constexpr):
    """Backward step t, part 1 (own units only), given what ``_bwd_saved`` read for t: dz_t into dgates[t]
    (and, LOW_EXCHANGE, a 16-bit copy into the exchange slot p_zx [B, 4H] that the other programs read);
    returns the carried dc."""
    o_j = i_p * HT + tl.arange(0, HT)
    m_bj = m_b[:, None] & (o_j < H)[None, :]
    b_alive = (t < b_len)[:, None]
    o_bg = (t.to(tl.int64) * B + o_b) * (4 * H)
    b_tc = _tanh(b_ct)
    b_dht = b_dh + tl.where(b_alive, b_dy, 0.)                      # dh_t = dh + dy_t
    b_dct = b_dc + b_dht * b_o * (1. - b_tc * b_tc)                 # dc_t = dc + dh_t ⊙ o ⊙ (1 - tanh²c)
    b_dzi = b_dct * b_g * b_i * (1. - b_i)
    b_dzf = b_dct * b_cp * b_f * (1. - b_f)
    b_dzg = b_dct * b_i * (1. - b_g * b_g)
    b_dzo = b_dht * b_tc * b_o * (1. - b_o)
    p_dz = p_dgates + o_bg[:, None] + o_j[None, :]
    tl.store(p_dz, tl.where(b_alive, b_dzi, 0.), mask=m_bj)
    tl.store(p_dz + H, tl.where(b_alive, b_dzf, 0.), mask=m_bj)
    tl.store(p_dz + 2 * H, tl.where(b_alive, b_dzg, 0.), mask=m_bj)
    tl.store(p_dz + 3 * H, tl.where(b_alive, b_dzo, 0.), mask=m_bj)
    if LOW_EXCHANGE:    # the tensor cores read dz in 16 bits anyway: exchange it in 16 bits, half the bytes
        p_dzx = p_zx + o_b[:, None] * (4 * H) + o_j[None, :]
        tl.store(p_dzx, _exchanged(tl.where(b_alive, b_dzi, 0.), p_zx, X), mask=m_bj)
        tl.store(p_dzx + H, _exchanged(tl.where(b_alive, b_dzf, 0.), p_zx, X), mask=m_bj)
        tl.store(p_dzx + 2 * H, _exchanged(tl.where(b_alive, b_dzg, 0.), p_zx, X), mask=m_bj)
        tl.store(p_dzx + 3 * H, _exchanged(tl.where(b_alive, b_dzo, 0.), p_zx, X), mask=m_bj)
    return tl.where(b_alive, b_dct * b_f, b_dc)                     # dc ← dc_t ⊙ f


@triton.jit
def _dz_w(p_zg, o_z, m_b, H, b_w, b_wt, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr, K_TAIL: tl.constexpr,
          USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """dz_gate · W_gate[:, own units] over all of K (p_zg: the gate's columns of dz_t), K in its pieces as
    forward (the tail's products added chunk by chunk, one sum): [BB, HT]."""
    b_z = _load_rows(p_zg, o_z, m_b, H, 0, BLOCK_K, K_SPLIT)
    if K_TAIL > 0:
        b_z = _dot(b_z, b_w, PRECISION)
        # the tail's dz loaded only after the first piece's product, so its staging in shared memory reuses
        # that piece's (loaded beside it: 48 instead of 32 KB at H = 1536, 240 KB in all, over the limit)
        b_z += _dot(_load_rows(p_zg, o_z, m_b, H, BLOCK_K, K_TAIL, K_SPLIT), b_wt, PRECISION)
        return _chunk_sum(b_z)
    else:
        return _hw(b_z, b_w, USE_DOT, PRECISION)


@triton.jit
def _poll_dz(p_z, o, m, o_t, m_t, H, K_TAIL: tl.constexpr):
    """One try at all of a polled dz_t the program reads: the four gates' first piece of K and (K_TAIL) their
    tails, every load in flight at once (``_poll_load``)."""
    z_i, z_f, z_g, z_o = _poll_pieces(p_z, o, m, o + H, m, o + 2 * H, m, o + 3 * H, m, 4)
    if K_TAIL > 0:
        t_i, t_f, t_g, t_o = _poll_pieces(p_z, o_t, m_t, o_t + H, m_t, o_t + 2 * H, m_t, o_t + 3 * H, m_t, 4)
    else:
        t_i, t_f, t_g, t_o = z_i, z_f, z_g, z_o
    return z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o


@triton.jit
def _late_dz(z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o, K_TAIL: tl.constexpr):
    late = _late_pieces(z_i, z_f, z_g, z_o, 4)
    if K_TAIL > 0:
        late |= _late_pieces(t_i, t_f, t_g, t_o, 4)
    return late


@triton.jit
def _bwd_tile_dh(p_z, b_len, b_wi, b_wf, b_wg, b_wo, b_ti, b_tf, b_tg, b_to, b_dh, t, o_b, m_b, B, H,
                 BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr, K_TAIL: tl.constexpr,
                 USE_DOT: tl.constexpr, PRECISION: tl.constexpr, DZ_ONE_ROUND: tl.constexpr, p_flag,
                 DTYPE: tl.constexpr, TIMEOUT: tl.constexpr):
    """Backward step t, part 2 (after the step synchronisation): dh ← Σ_gates dz_gate · W_gate[:, own units],
    reading all of dz_t (p_z: its [B, 4H] matrix, written by every program); returns dh."""
    o_z = o_b * (4 * H)                                             # row b of dz_t: [i | f | g | o]
    KS: tl.constexpr = K_SPLIT if USE_DOT else 1
    if DZ_ONE_ROUND and p_z.dtype.element_ty == tl.int16:    # polled: reloaded until none is UNWRITTEN
        o, m = _row_offsets(o_z, m_b, H, 0, BLOCK_K, KS)
        o_t, m_t = _row_offsets(o_z, m_b, H, BLOCK_K, K_TAIL if K_TAIL > 0 else BLOCK_K, KS)
        z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o = _poll_dz(p_z, o, m, o_t, m_t, H, K_TAIL)
        if TIMEOUT > 0:
            failed = tl.atomic_add(p_flag, 0, sem="relaxed", scope="gpu")
            spins = 0
            while _late_dz(z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o, K_TAIL) & (failed == 0):
                z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o = _poll_dz(p_z, o, m, o_t, m_t, H, K_TAIL)
                spins += 1
                failed = tl.where(spins >= TIMEOUT, 1, failed)
            if spins >= TIMEOUT:
                tl.atomic_xchg(p_flag, 1, sem="relaxed", scope="gpu")
        else:
            while _late_dz(z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o, K_TAIL):
                z_i, z_f, z_g, z_o, t_i, t_f, t_g, t_o = _poll_dz(p_z, o, m, o_t, m_t, H, K_TAIL)
        b_new = _dot(z_i.to(DTYPE, bitcast=True), b_wi, PRECISION) + _dot(z_f.to(DTYPE, bitcast=True), b_wf, PRECISION)
        b_new += _dot(z_g.to(DTYPE, bitcast=True), b_wg, PRECISION) + _dot(z_o.to(DTYPE, bitcast=True), b_wo, PRECISION)
        if K_TAIL > 0:
            b_new += (_dot(t_i.to(DTYPE, bitcast=True), b_ti, PRECISION)
                      + _dot(t_f.to(DTYPE, bitcast=True), b_tf, PRECISION))
            b_new += (_dot(t_g.to(DTYPE, bitcast=True), b_tg, PRECISION)
                      + _dot(t_o.to(DTYPE, bitcast=True), b_to, PRECISION))
        return tl.where((t < b_len)[:, None], _chunk_sum(b_new).to(b_dh.dtype), b_dh)
    if DZ_ONE_ROUND:                     # all of dz_t's loads issued at once: one L2 round trip
        z_i = _load_rows(p_z, o_z, m_b, H, 0, BLOCK_K, KS)
        z_f = _load_rows(p_z + H, o_z, m_b, H, 0, BLOCK_K, KS)
        z_g = _load_rows(p_z + 2 * H, o_z, m_b, H, 0, BLOCK_K, KS)
        z_o = _load_rows(p_z + 3 * H, o_z, m_b, H, 0, BLOCK_K, KS)
        if K_TAIL > 0:
            t_i = _load_rows(p_z, o_z, m_b, H, BLOCK_K, K_TAIL, KS)
            t_f = _load_rows(p_z + H, o_z, m_b, H, BLOCK_K, K_TAIL, KS)
            t_g = _load_rows(p_z + 2 * H, o_z, m_b, H, BLOCK_K, K_TAIL, KS)
            t_o = _load_rows(p_z + 3 * H, o_z, m_b, H, BLOCK_K, K_TAIL, KS)
        b_new = _dot(z_i, b_wi, PRECISION) + _dot(z_f, b_wf, PRECISION)
        b_new += _dot(z_g, b_wg, PRECISION) + _dot(z_o, b_wo, PRECISION)
        if K_TAIL > 0:
            b_new += _dot(t_i, b_ti, PRECISION) + _dot(t_f, b_tf, PRECISION)
            b_new += _dot(t_g, b_tg, PRECISION) + _dot(t_o, b_to, PRECISION)
        return tl.where((t < b_len)[:, None], _chunk_sum(b_new).to(b_dh.dtype), b_dh)
    b_new = _dz_w(p_z, o_z, m_b, H, b_wi, b_ti, BLOCK_K, KS, K_TAIL, USE_DOT, PRECISION)
    b_new += _dz_w(p_z + H, o_z, m_b, H, b_wf, b_tf, BLOCK_K, KS, K_TAIL, USE_DOT, PRECISION)
    b_new += _dz_w(p_z + 2 * H, o_z, m_b, H, b_wg, b_tg, BLOCK_K, KS, K_TAIL, USE_DOT, PRECISION)
    b_new += _dz_w(p_z + 3 * H, o_z, m_b, H, b_wo, b_to, BLOCK_K, KS, K_TAIL, USE_DOT, PRECISION)
    return tl.where((t < b_len)[:, None], b_new.to(b_dh.dtype), b_dh)   # frozen rows pass dh through


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_kernel(
    # pointers (all contiguous)
    p_dy,        # [T, B, H] gradient w.r.t. y
    p_dhn,       # [B, H]
    p_dcn,       # [B, H]
    p_gates,     # [T, B, 4H] (accumulation dtype), saved by forward
    p_cells,     # [T, B, H]  (accumulation dtype), saved by forward
    p_c0,        # [B, H] (accumulation dtype)
    p_w,         # [4H, H] W_hh
    p_len,       # [B] int32
    p_dgates,    # [T, B, 4H] out (accumulation dtype): dz, the gradient w.r.t. gates_x
    p_dh0,       # [B, H] out (accumulation dtype)
    p_dc0,       # [B, H] out (accumulation dtype)
    p_dhs,       # [B, H] accumulation-dtype scratch for dh when the batch needs several tiles
    p_dcs,       # [B, H] accumulation-dtype scratch for dc
    p_zx,        # [2, B, 4H] input dtype, LOW_EXCHANGE only: dz in 16 bits, slot s % 2 at step s;
                 # POLLED: [T, B, 4H] int16, slot s at step s, UNWRITTEN until then
    p_bar,       # [2·groups] int64, zero: each batch group's step counter and time-out flag
    # sizes
    T, B,
    H: tl.constexpr,     # a constant: every offset inside a row becomes an immediate (fewer address registers)
    BG,          # batch rows per batch group (program_id(1) picks the group); B when there is one
    # meta-parameters
    REVERSE: tl.constexpr,
    HT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, ONE_TILE: tl.constexpr,
    FULL: tl.constexpr,          # every batch tile has BLOCK_B rows (``_full_tiles``): no row masks
    K_SPLIT: tl.constexpr,       # tl.dot: K chunks, each an independent accumulator
    K_TAIL: tl.constexpr,        # tl.dot: a second, smaller piece of K after BLOCK_K (0: none), in K_SPLIT chunks too
    GROUPED: tl.constexpr,       # more than one batch group (program_id(1) > 0 exists)
    LOW_EXCHANGE: tl.constexpr,  # exchange dz in the 16-bit input dtype (tensor-core path)
    POLLED: tl.constexpr,        # LOW_EXCHANGE, one tile: dz in write-once slots the readers poll, no step counter
    DZ_ONE_ROUND: tl.constexpr,  # tl.dot: the loads of dz_t for all four gates issued together (else gate by gate)
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr,  # programs of one batch group: they meet at the group's step counter
    ACC: tl.constexpr,
    TIMEOUT: tl.constexpr,       # barrier polls before giving up (debug mode); 0 = wait forever
):
    i_p = tl.program_id(0)
    i_q, row0, b_end = _batch_group(B, BG, GROUPED)                 # this program's rows: [row0, b_end)
    num_bt = tl.cdiv(b_end - row0, BLOCK_B)
    p_flag = p_bar + 2 * i_q + 1                                    # the group's time-out flag
    X: tl.constexpr = p_dy.dtype.element_ty

    # The columns W_hh[:, own units], gate by gate, loaded ONCE and kept on chip for all T steps.
    b_wi = _load_w_gate(p_w, 0, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, True)
    b_wf = _load_w_gate(p_w, 1, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, True)
    b_wg = _load_w_gate(p_w, 2, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, True)
    b_wo = _load_w_gate(p_w, 3, i_p, H, 0, HT, BLOCK_K, K_SPLIT, USE_DOT, ACC, True)
    if K_TAIL > 0:      # K beyond BLOCK_K, a smaller piece (as forward)
        b_ti = _load_w_gate(p_w, 0, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, True)
        b_tf = _load_w_gate(p_w, 1, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, True)
        b_tg = _load_w_gate(p_w, 2, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, True)
        b_to = _load_w_gate(p_w, 3, i_p, H, BLOCK_K, HT, K_TAIL, K_SPLIT, USE_DOT, ACC, True)
    else:               # no tail: placeholders, never read
        b_ti, b_tf, b_tg, b_to = b_wi, b_wf, b_wg, b_wo
    o_j = i_p * HT + tl.arange(0, HT)
    m_j = o_j < H

    if ONE_TILE:                                                    # dh, dc live in registers
        o_b, m_b = _tile_rows(row0, b_end, BLOCK_B, FULL)
        m_bj = m_b[:, None] & m_j[None, :]
        o_bj = o_b[:, None] * H + o_j[None, :]
        b_dh = tl.load(p_dhn + o_bj, mask=m_bj, other=0.).to(ACC)
        b_dc = tl.load(p_dcn + o_bj, mask=m_bj, other=0.).to(ACC)
        b_len = tl.load(p_len + o_b, mask=m_b, other=0)            # lengths: loaded once
        b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy = _bwd_saved(p_dy, p_gates, p_cells, p_c0, 0 if REVERSE else T - 1, T,
                                                          i_p, o_b, m_b, B, H, REVERSE, HT, BLOCK_B, ACC)
        for s in tl.range(T, num_stages=1):
            t = s if REVERSE else T - 1 - s                         # the opposite order to forward
            if POLLED:      # dz_t in slot s of the ring
                p_z = p_zx + tl.cast(s, tl.int64) * B * 4 * H
            else:
                p_z = p_zx + (s % 2) * B * 4 * H if LOW_EXCHANGE else p_dgates + t.to(tl.int64) * B * 4 * H
            b_dc = _bwd_tile_dz(b_len, p_dgates, p_z, b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy, b_dh, b_dc, t, i_p, o_b,
                                m_b, B, H, HT, LOW_EXCHANGE, X)
            b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy = _bwd_saved(    # the next step's, before the wait
                p_dy, p_gates, p_cells, p_c0, t + 1 if REVERSE else t - 1, T, i_p, o_b, m_b, B, H, REVERSE, HT,
                BLOCK_B, ACC)
            if not POLLED:
                step_barrier(p_bar + 2 * i_q, s, NUM_PROGRAMS, TIMEOUT)
            b_dh = _bwd_tile_dh(p_z, b_len, b_wi, b_wf, b_wg, b_wo, b_ti, b_tf, b_tg, b_to, b_dh, t, o_b, m_b, B, H,
                                BLOCK_K, K_SPLIT, K_TAIL, USE_DOT, PRECISION, DZ_ONE_ROUND, p_flag, X,
                                TIMEOUT)
        tl.store(p_dh0 + o_bj, b_dh, mask=m_bj)
        tl.store(p_dc0 + o_bj, b_dc, mask=m_bj)
    else:                                                           # dh, dc live in scratch slices
        for i_bt in range(num_bt):
            o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
            m_bj = m_b[:, None] & m_j[None, :]
            o_bj = o_b[:, None] * H + o_j[None, :]
            tl.store(p_dhs + o_bj, tl.load(p_dhn + o_bj, mask=m_bj, other=0.).to(ACC), mask=m_bj)
            tl.store(p_dcs + o_bj, tl.load(p_dcn + o_bj, mask=m_bj, other=0.).to(ACC), mask=m_bj)
        for s in tl.range(T, num_stages=1):
            t = s if REVERSE else T - 1 - s
            p_z = p_zx + (s % 2) * B * 4 * H if LOW_EXCHANGE else p_dgates + t.to(tl.int64) * B * 4 * H
            for i_bt in range(num_bt):
                o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
                m_bj = m_b[:, None] & m_j[None, :]
                o_bj = o_b[:, None] * H + o_j[None, :]
                tl.debug_barrier()
                b_dh = tl.load(p_dhs + o_bj, mask=m_bj, other=0.)
                b_dc = tl.load(p_dcs + o_bj, mask=m_bj, other=0.)
                b_len = tl.load(p_len + o_b, mask=m_b, other=0)
                b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy = _bwd_saved(p_dy, p_gates, p_cells, p_c0, t, T, i_p, o_b, m_b, B,
                                                                  H, REVERSE, HT, BLOCK_B, ACC)
                b_dc = _bwd_tile_dz(b_len, p_dgates, p_z, b_i, b_f, b_g, b_o, b_ct, b_cp, b_dy, b_dh, b_dc, t, i_p,
                                    o_b, m_b, B, H, HT, LOW_EXCHANGE, X)
                tl.store(p_dcs + o_bj, b_dc, mask=m_bj)
            step_barrier(p_bar + 2 * i_q, s, NUM_PROGRAMS, TIMEOUT)
            for i_bt in range(num_bt):
                o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
                m_bj = m_b[:, None] & m_j[None, :]
                o_bj = o_b[:, None] * H + o_j[None, :]
                b_dh = tl.load(p_dhs + o_bj, mask=m_bj, other=0.)
                b_len = tl.load(p_len + o_b, mask=m_b, other=0)
                b_dh = _bwd_tile_dh(p_z, b_len, b_wi, b_wf, b_wg, b_wo, b_ti, b_tf, b_tg, b_to, b_dh, t,
                                    o_b, m_b, B, H, BLOCK_K, K_SPLIT, K_TAIL, USE_DOT,
                                    PRECISION, DZ_ONE_ROUND, p_flag, X, TIMEOUT)
                tl.store(p_dhs + o_bj, b_dh, mask=m_bj)
        tl.debug_barrier()
        for i_bt in range(num_bt):
            o_b, m_b = _tile_rows(row0 + i_bt * BLOCK_B, b_end, BLOCK_B, FULL)
            m_bj = m_b[:, None] & m_j[None, :]
            o_bj = o_b[:, None] * H + o_j[None, :]
            tl.store(p_dh0 + o_bj, tl.load(p_dhs + o_bj, mask=m_bj), mask=m_bj)
            tl.store(p_dc0 + o_bj, tl.load(p_dcs + o_bj, mask=m_bj), mask=m_bj)


# ----------------------------------------------------------------------------------------------------
# 2. Launchers: check, allocate, launch
# ----------------------------------------------------------------------------------------------------

_TL_ACC = {torch.float64: tl.float64, torch.float32: tl.float32}
# The polled exchanges' slots (a slot per step: as much memory as y forward, half of dgates backward) above this
# size: the step counter's two slots instead, so a long sequence does not run out of memory for speed.
POLLED_SLOTS_BYTES = 1 << 30
# A measurement switch, never for results: False launches the step-counter kernels with NUM_PROGRAMS = 1, so no
# program waits for the others (every step reads whatever h / dz the exchange holds: WRONG results). Timed
# against the same launch with it on (bench/insitu.py), it gives what the step synchronisation costs inside the
# kernel; the floor kernel (bench/floor.py) gives it alone.
STEP_SYNC = True


def _grid(cfg: LSTMConfig, B: int) -> tuple[tuple[int, int], int, bool]:
    """(grid, rows per batch group, one tile per group?): program (p, q) runs units p·HT… of the rows of
    group q. The groups are independent recurrences, each with its own step counter among its grid[0]
    programs; the grid must be exactly cfg.num_programs, or a step synchronisation never completes."""
    rows = cfg.rows_per_group(B)
    groups = -(-B // rows) if B else 1
    if groups != cfg.batch_groups or cfg.num_programs % groups:
        raise ValueError(f"config {cfg} does not split a batch of {B} into {cfg.batch_groups} groups")
    return (cfg.num_programs // groups, groups), rows, rows <= cfg.block_b


def _full_tiles(B: int, rows: int, block_b: int) -> bool:
    """Whether the kernels' row masks can be constants (``_tile_rows``): every batch group (``rows`` rows) is
    ONE whole tile, none cut short by B. With several tiles a group the forward kept a value in local memory
    inside the time loop (bf16 B256 H1024, 4 tiles of 32 rows, sm_90, triton 3.6): masks kept there."""
    return B > 0 and rows == block_b and B % rows == 0


def _launch_options(cfg: LSTMConfig, device: torch.device) -> dict:
    """Compile and launch options. On a GPU (and on the meta device, on which kernels/triton_sm90.py
    records a launch to compile it for sm_90) the grid is cooperative and ptxas may use every register:
    one program per SM shares its register file with nobody, and without a .maxnreg ptxas capped some
    kernels at 128 registers and spilled inside the time loop (fp16 B=64 H=128: 128 registers and a
    local-memory access every step; with maxnreg=255: 158 and none)."""
    opts = dict(num_warps=cfg.num_warps, num_stages=1)
    if device.type in ("cuda", "meta"):
        opts["maxnreg"] = 255
        if cfg.num_programs > 1:
            opts["launch_cooperative_grid"] = True  # the driver refuses a grid that cannot be co-resident
    return opts


def lstm_fwd(gates_x, h0, c0, w_hh, lengths=None, reverse=False, save=True, config: LSTMConfig | None = None):
    """Launch the forward kernel. Returns y, h_n, c_n, gates | None, cells | None."""
    T, B, G = gates_x.shape
    H = G // 4
    dtype, device = gates_x.dtype, gates_x.device
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    cfg = config or choose_config(B=B, H=H, dtype=dtype, device=device)
    lens = host.lengths_or_full(lengths, T, B, device)

    y = torch.empty(T, B, H, dtype=dtype, device=device)
    h_n = torch.empty(B, H, dtype=dtype, device=device)
    c_n = torch.empty(B, H, dtype=dtype, device=device)
    if save:
        gates = torch.empty(T, B, G, dtype=acc, device=device)
        cells = torch.empty(T, B, H, dtype=acc, device=device)
    else:
        gates = cells = torch.empty(1, dtype=acc, device=device)   # never written (SAVE is off)
    grid, rows, one_tile = _grid(cfg, B)
    c_scratch = torch.empty(1 if one_tile else B * H, dtype=acc, device=device)
    h_scratch = torch.empty(1 if one_tile else B * H, dtype=dtype, device=device)
    polled = (cfg.polled_exchange(dtype) and one_tile     # several tiles, polled: 6-8 spills per step (sm_90)
              and (T + 1) * B * H * 2 <= POLLED_SLOTS_BYTES and STEP_SYNC)
    # Polled: a slot per generation, UNWRITTEN until written, h0's bits (a -0.0 as +0.0) in slot 0. Through the
    # counter: two slots, h0 in slot 0 (so the first synchronisation inside is step 0's).
    if polled:
        h_exchange = torch.full((T + 1, B, H), UNWRITTEN.value, dtype=torch.int16, device=device)
        bits = h0.view(torch.int16)
        h_exchange[0] = bits.masked_fill(bits == UNWRITTEN.value, 0)
    else:   # (zeroed where nothing waits for a slot to be written: no step reads garbage, say a NaN)
        h_exchange = (torch.empty if STEP_SYNC else torch.zeros)(2, B, H, dtype=dtype, device=device)
        h_exchange[0].copy_(h0)
    if T == 0:
        h_n.copy_(h0), c_n.copy_(c0)
        return y, h_n, c_n, (gates if save else None), (cells if save else None)

    bar, timeout = barrier_state(device, grid[1]), barrier_timeout()
    with host.device_guard(device):     # Triton launches on the current device: make it the input's
        _lstm_fwd_kernel[grid](
            gates_x, h0, c0, w_hh, lens, y, h_n, c_n, gates, cells, h_exchange, c_scratch, h_scratch, bar,
            T, B, H, rows,
            REVERSE=bool(reverse), SAVE=bool(save), HT=cfg.ht, BLOCK_K=cfg.block_k, BLOCK_B=cfg.block_b,
            ONE_TILE=one_tile, FULL=_full_tiles(B, rows, cfg.block_b), K_SPLIT=cfg.k_split, K_TAIL=cfg.k_tail, TAIL_AFTER=cfg.tail_after(dtype),
            PIECES=cfg.pieces, TRANSPOSED=cfg.transposed, GROUPED=grid[1] > 1, USE_DOT=cfg.use_dot,
            PRECISION=cfg.precision, POLLED=polled, NUM_PROGRAMS=grid[0] if STEP_SYNC else 1, ACC=_TL_ACC[acc],
            TIMEOUT=timeout, FOLD=cfg.fold,
            **_launch_options(cfg, device))
    if timeout:
        raise_if_timed_out(bar, "forward")
    return y, h_n, c_n, (gates if save else None), (cells if save else None)


def lstm_bwd(dy, dh_n, dc_n, gates, cells, c0, w_hh, lengths=None, reverse=False, config: LSTMConfig | None = None):
    """Launch the backward kernel. Returns dgates, dh0, dc0 (accumulation dtype)."""
    T, B, G = gates.shape
    H = G // 4
    dtype, device, acc = dy.dtype, dy.device, gates.dtype
    cfg = config or choose_config(B=B, H=H, dtype=dtype, device=device, backward=True)
    if cfg.pieces:
        raise ValueError(f"lstm_bwd: {cfg} is a forward config (K in fused pieces); the backward's has pieces=0")
    lens = host.lengths_or_full(lengths, T, B, device)
    c0 = c0.to(acc)     # c_{t-1} of the first step, in the dtype of the saved cells: no convert in the loop

    dgates = (torch.empty if STEP_SYNC else torch.zeros)(T, B, G, dtype=acc, device=device)   # (as forward)
    dh0 = torch.empty(B, H, dtype=acc, device=device)
    dc0 = torch.empty(B, H, dtype=acc, device=device)
    grid, rows, one_tile = _grid(cfg, B)
    dh_scratch = torch.empty(1 if one_tile else B * H, dtype=acc, device=device)
    dc_scratch = torch.empty(1 if one_tile else B * H, dtype=acc, device=device)
    low_exchange = cfg.low_exchange(dtype)
    polled = (cfg.polled_backward(dtype) and one_tile and T * B * G * 2 <= POLLED_SLOTS_BYTES   # one tile, as forward
              and STEP_SYNC)
    if polled:      # a slot per step, UNWRITTEN until written (see the forward's h exchange)
        dz_exchange = torch.full((max(T, 1), B, G), UNWRITTEN.value, dtype=torch.int16, device=device)
    else:
        dz_exchange = (torch.empty if STEP_SYNC else torch.zeros)(2 * B * G if low_exchange else 1, dtype=dtype,
                                                                  device=device)
    if T == 0:
        dh0.copy_(dh_n), dc0.copy_(dc_n)
        return dgates, dh0, dc0

    bar, timeout = barrier_state(device, grid[1]), barrier_timeout()
    with host.device_guard(device):     # Triton launches on the current device: make it the input's
        _lstm_bwd_kernel[grid](
            dy, dh_n, dc_n, gates, cells, c0, w_hh, lens, dgates, dh0, dc0, dh_scratch, dc_scratch, dz_exchange,
            bar, T, B, H, rows,
            REVERSE=bool(reverse), HT=cfg.ht, BLOCK_K=cfg.block_k, BLOCK_B=cfg.block_b, ONE_TILE=one_tile,
            FULL=_full_tiles(B, rows, cfg.block_b),
            K_SPLIT=cfg.k_split, K_TAIL=cfg.k_tail, GROUPED=grid[1] > 1,
            LOW_EXCHANGE=low_exchange, POLLED=polled, DZ_ONE_ROUND=cfg.dz_one_round and cfg.use_dot,
            USE_DOT=cfg.use_dot,
            PRECISION=cfg.precision, NUM_PROGRAMS=grid[0] if STEP_SYNC else 1, ACC=_TL_ACC[acc], TIMEOUT=timeout,
            **_launch_options(cfg, device))
    if timeout:
        raise_if_timed_out(bar, "backward")
    return dgates, dh0, dc0


# ----------------------------------------------------------------------------------------------------
# Backend entry points (lstm_gpu/backends.py): the contract of lstm_gpu/reference.py
# ----------------------------------------------------------------------------------------------------

def unsupported(*, device: torch.device, dtype: torch.dtype, hidden_size: int, batch: int) -> str | None:
    """Why this backend cannot run an LSTM of this shape, or None if it can."""
    return unsupported_reason(device=torch.device(device), dtype=dtype, hidden_size=hidden_size, batch=batch)


def _check(dtype, device, H, B):
    reason = unsupported(device=device, dtype=dtype, hidden_size=H, batch=B)
    if reason is not None:
        raise ValueError(f"backend='triton' cannot run this call: {reason}")


def forward(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, save):
    """y [T,B,H], h_n [B,H], c_n [B,H], gates [T,B,4H] | None, cells [T,B,H] | None (see reference.py)."""
    if w_hr is not None:
        raise ValueError("the triton kernels take no W_hr: lstm_gpu.functional folds a projection into W_hh")
    T, B, G = gates_x.shape
    _check(gates_x.dtype, gates_x.device, G // 4, B)
    return lstm_fwd(gates_x, h0, c0, w_hh, lengths, reverse, save)


def backward(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse):
    """dgates [T,B,4H], dh0 [B,H], dc0 [B,H] (accumulation dtype), dw_hr = None (no projection)."""
    if w_hr is not None:
        raise ValueError("the triton kernels take no W_hr: lstm_gpu.functional folds a projection into W_hh")
    T, B, G = gates.shape
    _check(dy.dtype, dy.device, G // 4, B)
    dgates, dh0, dc0 = lstm_bwd(dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), gates.contiguous(),
                                cells.contiguous(), c0.contiguous(), w_hh.contiguous(), lengths, reverse)
    return dgates, dh0, dc0, None
