"""The persistent fused LSTM recurrence as Numba-CUDA kernels: one launch walks every time step.

STATUS: written on a machine without a GPU and tested in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), one
block at a time (tests/test_numba_cpu.py); since run on one GPU (an H200, 2026-11-28): the smoke grid matched the
reference. tests/test_numba_gpu.py holds the many-block, cuDNN, resource and back-to-back launch checks, not yet
run on a GPU.

Supports: float16 (fp32 accumulation), float32, float64 (float64 state); bfloat16 is refused by the
launcher (kernels/numba_lstm.py says why). Per-sequence lengths (state frozen past the end, output zero),
reverse direction, given h0/c0. No projection (proj_size = 0).

Known risks (unverified until a GPU run):
- ``cuda.cg.this_grid().sync()`` deadlocks if more blocks are launched than can be co-resident; the
  launcher sizes the grid with ``max_cooperative_grid_blocks`` and the driver refuses an oversized
  cooperative launch, but that refusal path has not been seen.
- Dynamic shared memory above 48 KB needs the MAX_DYNAMIC_SHARED_SIZE_BYTES opt-in (numba_lstm.py).
- h_{t-1} written by other blocks is read after the grid barrier with plain loads; the slot y[t-1] is
  never read before it is written, so no stale L1 line can exist, but this relies on grid.sync's fence.
- The simulator has no warp shuffle: there ``group_sum`` is an emulation with the same semantics
  (see its docstring), so the real ``cuda.shfl_down_sync`` path is compiled but untested.
- Registers: ptxas -arch=sm_90 on the NVVM output (before cudadevrt is linked) reports 112 (forward)
  and 98-101 (backward) registers per thread, no spills, for fp16/fp32/fp64 (tests/test_numba_cpu.py).
- Speed is unknown. Every (row, batch) dot product re-reads its W_hh row from shared memory; a batch
  tile that reuses it from registers is the obvious next step once a profile exists.

Dimension legend
    T   time steps                  B   batch (sequences)
    H   hidden size                 G   4·H gate rows, order i, f, g, o (PyTorch's)
    HT  hidden units owned by one block (the same HT units of each of the 4 gates)
    j0  first hidden unit of the block; jl = j - j0 the local unit index
    NT  threads per block           LANES  threads cooperating on one dot product (1..32, power of 2)

The recurrence (lstm_gpu/reference.py is the contract, tensor for tensor):

    z_t = gates_x[t] + h_{t-1} · W_hhᵀ
    i, f, o = σ(z_i), σ(z_f), σ(z_o)        g = tanh(z_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

Forward, one block, per step:  (1) each (row, batch) pair of the block's 4·HT rows: LANES threads stride
over k and a shuffle tree sums their partial dot products h_{t-1}[b]·W_hh[row]  (2) each (unit, batch)
owner thread applies the gates, updates c (kept on chip for the whole launch), writes h_t to y[t]
(a fresh slot per step, so one grid barrier per step suffices)  (3) grid barrier.

Backward walks the steps in the opposite order, with W_hh's columns for the block's units on chip:

    dh_t   = dh_carry + dy_t
    do     = dh_t ⊙ tanh(c_t)              dc_t = dc_carry + dh_t ⊙ o ⊙ (1 - tanh²(c_t))
    di, df, dg = dc_t ⊙ g, dc_t ⊙ c_{t-1}, dc_t ⊙ i
    dz_t   = [di·i(1-i), df·f(1-f), dg·(1-g²), do·o(1-o)]      → dgates[t]
    dh_carry = dz_t · W_hh  (needs all of dz_t: grid barrier first)      dc_carry = dc_t ⊙ f

Past a sequence's end (t ≥ lengths[b]) dz is zero and both carries pass through unchanged.
dW_hh is one GEMM over all steps, done by the caller (lstm_gpu/ops.py).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from .host import cpu_emulation

# numba-cuda 0.30.4 registers an overload of np.row_stack when it first compiles a kernel; numpy 2.5 removed
# row_stack (an alias of vstack), so on the first GPU run (H200 machine, 2026-11-28) every numba launch failed
# with "module 'numpy' has no attribute 'row_stack'" (NVIDIA/numba-cuda#907, not fixed upstream). Restore it.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

SIMULATOR = cpu_emulation("numba")
FULL_MASK = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# Summing a dot product over a group of LANES consecutive threads (a warp or part of one)
# ---------------------------------------------------------------------------------------------------
if not SIMULATOR:
    @cuda.jit(device=True)
    def group_sum(v, lanes):
        """Tree sum over groups of ``lanes`` consecutive threads; the group's first thread gets the total.

        Every thread of the warp must call it (full mask): callers keep the call outside any branch.
        """
        off = lanes // 2
        while off > 0:
            v += cuda.shfl_down_sync(FULL_MASK, v, off)
            off //= 2
        return v
else:
    @cuda.jit(device=True)
    def group_sum(v, lanes):
        """Simulator stand-in for the shuffle tree above (the simulator has no warp shuffles).

        Same result on the group's first thread, same summation order; the exchange goes through a
        scratch buffer between two block barriers, so every thread of the BLOCK must call it
        (the kernels below do: the call is never inside a branch). The scratch is the last
        blockDim float64 slots of the dynamic shared memory (the launcher adds SIM_SCRATCH_BYTES):
        the simulator's static ``cuda.shared.array`` is created on first use without a lock, and
        threads racing there got different buffers (seen: a flaky wrong sum with 64 threads).
        """
        if lanes == 1:
            return v
        dyn = cuda.shared.array(0, numba.float64)
        scratch = dyn[dyn.shape[0] - cuda.blockDim.x:]
        tid = cuda.threadIdx.x
        scratch[tid] = v
        cuda.syncthreads()
        total = v
        if tid % lanes == 0:
            kind = type(v)
            vals = [kind(scratch[tid + i]) for i in range(lanes)]
            off = lanes // 2
            while off > 0:
                for i in range(off):
                    vals[i] = kind(vals[i] + vals[i + off])
                off //= 2
            total = vals[0]
        cuda.syncthreads()
        return total


# ---------------------------------------------------------------------------------------------------
# The kernels, built once per storage dtype (STORE) with its accumulation dtype (ACC)
# ---------------------------------------------------------------------------------------------------
def make_kernels(store):
    """(forward kernel, backward kernel) for tensors of numpy dtype ``store`` (float16/32/64).

    State, gates and reductions use ACC = float64 for float64 inputs, float32 otherwise.
    """
    STORE = np.dtype(store).type
    ACC = np.float64 if STORE is np.float64 else np.float32
    STORE_T, ACC_T = numba.from_dtype(np.dtype(STORE)), numba.from_dtype(np.dtype(ACC))   # array dtypes
    STORE_BYTES = np.dtype(STORE).itemsize
    ACC_BYTES = np.dtype(ACC).itemsize

    @cuda.jit(device=True)
    def sigmoid(x):
        # exp of a non-positive argument only: no overflow for any x
        if x >= ACC(0.0):
            return ACC(ACC(1.0) / (ACC(1.0) + ACC(math.exp(-x))))
        e = ACC(math.exp(x))
        return ACC(e / (ACC(1.0) + e))

    @cuda.jit(device=True)
    def tanh(x):
        return ACC(math.tanh(x))

    # -----------------------------------------------------------------------------------------------
    # Forward
    # -----------------------------------------------------------------------------------------------
    @cuda.jit
    def lstm_fwd_kernel(
        gates_x,    # [T, B, 4H] STORE  x·W_ihᵀ + b_ih + b_hh, gate order i, f, g, o
        h0,         # [B, H]     STORE
        c0,         # [B, H]     STORE
        w_hh,       # [4H, H]    STORE
        lengths,    # [B]        int32  (all T when no lengths were given)
        y,          # [T, B, H]  STORE  out: h_t (zero past a sequence's end); also the h exchange
        h_n,        # [B, H]     STORE  out
        c_n,        # [B, H]     STORE  out
        gates,      # [T, B, 4H] ACC    out when save: activated i, f, g, o
        cells,      # [T, B, H]  ACC    out when save: c after every step
        HT,         # hidden units per block
        LANES,      # threads per dot product
        reverse,    # walk t = T-1 … 0
        save,       # write gates and cells
    ):
        T = gates_x.shape[0]
        B = gates_x.shape[1]
        H = h0.shape[1]
        tid = cuda.threadIdx.x
        NT = cuda.blockDim.x
        j0 = cuda.blockIdx.x * HT
        nj = min(HT, H - j0)                       # the last block may own fewer units
        grid = cuda.cg.this_grid()

        # On-chip buffers, carved out of one dynamic shared allocation:
        #   w_s[(g·HT + jl)·H + k] = W_hh[g·H + j0 + jl, k]          4·HT·H  STORE
        #   z_s[(g·HT + jl)·B + b] = h_{t-1}[b] · W_hh[g·H + j]       4·HT·B  ACC
        #   c_s[jl·B + b]          = c of (unit, batch), whole launch   HT·B  ACC
        smem_w = cuda.shared.array(0, STORE_T)
        w_s = smem_w[:4 * HT * H]
        smem_a = cuda.shared.array(0, ACC_T)
        a0 = (4 * HT * H * STORE_BYTES + ACC_BYTES - 1) // ACC_BYTES
        z_s = smem_a[a0:a0 + 4 * HT * B]
        c_s = smem_a[a0 + 4 * HT * B:a0 + 5 * HT * B]

        # 1. Stage the block's W_hh rows once (coalesced: consecutive threads read consecutive k).
        for e in range(tid, 4 * HT * H, NT):
            rl = e // H
            k = e - rl * H
            g = rl // HT
            jl = rl - g * HT
            if jl < nj:
                w_s[e] = w_hh[g * H + j0 + jl, k]
        for q in range(tid, HT * B, NT):
            jl = q // B
            b = q - jl * B
            if jl < nj:
                c_s[q] = ACC(c0[b, j0 + jl])
        cuda.syncthreads()

        groups = NT // LANES
        grp = tid // LANES
        lane = tid - grp * LANES
        npairs = 4 * HT * B
        rounds = (npairs + groups - 1) // groups

        for s in range(T):
            t = T - 1 - s if reverse else s

            # 2. Recurrent mat-vec: z_s[p] = h_{t-1}[b] · W_hh[row], p = row_local·B + b.
            #    h_{t-1} comes from h0 at a sequence's first step, else from y (written before the
            #    last grid barrier). Past a forward sequence's end it is the frozen last output.
            for rnd in range(rounds):
                p = rnd * groups + grp
                rl = p // B
                b = p - rl * B
                g = rl // HT
                jl = rl - g * HT
                active = p < npairs and jl < nj
                part = ACC(0.0)
                if active:
                    row = rl * H
                    if reverse:
                        tp = t + 1
                        first = tp >= lengths[b]
                    else:
                        tp = min(t - 1, lengths[b] - 1)
                        first = t == 0
                    if first:
                        for k in range(lane, H, LANES):
                            part += ACC(w_s[row + k]) * ACC(h0[b, k])
                    else:
                        for k in range(lane, H, LANES):
                            part += ACC(w_s[row + k]) * ACC(y[tp, b, k])
                part = group_sum(part, LANES)       # every thread calls it: no branch around it
                if active and lane == 0:
                    z_s[p] = part
            cuda.syncthreads()

            # 3. Gates, cell and hidden state: one owner thread per (unit, batch), fixed for the launch.
            for q in range(tid, HT * B, NT):
                jl = q // B
                b = q - jl * B
                if jl < nj:
                    j = j0 + jl
                    zi = ACC(gates_x[t, b, j]) + z_s[jl * B + b]
                    zf = ACC(gates_x[t, b, H + j]) + z_s[(HT + jl) * B + b]
                    zg = ACC(gates_x[t, b, 2 * H + j]) + z_s[(2 * HT + jl) * B + b]
                    zo = ACC(gates_x[t, b, 3 * H + j]) + z_s[(3 * HT + jl) * B + b]
                    i_g = sigmoid(zi)
                    f_g = sigmoid(zf)
                    g_g = tanh(zg)
                    o_g = sigmoid(zo)
                    c_new = f_g * c_s[q] + i_g * g_g
                    h_new = o_g * tanh(c_new)
                    n_b = lengths[b]
                    if t < n_b:                       # alive: advance the state
                        c_s[q] = c_new
                        y[t, b, j] = STORE(h_new)
                    else:                             # past the end: frozen state, zero output
                        y[t, b, j] = STORE(0.0)
                    if save:
                        gates[t, b, j] = i_g
                        gates[t, b, H + j] = f_g
                        gates[t, b, 2 * H + j] = g_g
                        gates[t, b, 3 * H + j] = o_g
                        cells[t, b, j] = c_s[q]
                    last = t == 0 if reverse else t == n_b - 1
                    if last:
                        h_n[b, j] = STORE(h_new)
            grid.sync()                               # y[t] complete everywhere before step t+1

        for q in range(tid, HT * B, NT):
            jl = q // B
            b = q - jl * B
            if jl < nj:
                c_n[b, j0 + jl] = STORE(c_s[q])

    # -----------------------------------------------------------------------------------------------
    # Backward
    # -----------------------------------------------------------------------------------------------
    @cuda.jit
    def lstm_bwd_kernel(
        dy,         # [T, B, H]  STORE  gradient of y
        dh_n,       # [B, H]     STORE
        dc_n,       # [B, H]     STORE
        gates,      # [T, B, 4H] ACC    saved activated i, f, g, o
        cells,      # [T, B, H]  ACC    saved c_t
        c0,         # [B, H]     STORE
        w_hh,       # [4H, H]    STORE
        lengths,    # [B]        int32
        dgates,     # [T, B, 4H] ACC    out: dz_t (zero past a sequence's end); also the exchange
        dh0,        # [B, H]     ACC    out
        dc0,        # [B, H]     ACC    out
        HT,         # hidden units per block
        LANES,      # threads per dot product
        reverse,    # the forward pass walked t = T-1 … 0
    ):
        T = gates.shape[0]
        B = gates.shape[1]
        H = c0.shape[1]
        G = 4 * H
        tid = cuda.threadIdx.x
        NT = cuda.blockDim.x
        j0 = cuda.blockIdx.x * HT
        nj = min(HT, H - j0)
        grid = cuda.cg.this_grid()

        #   wt_s[jl·G + r] = W_hh[r, j0 + jl]     HT·4H  STORE   (the block's columns, transposed)
        #   dh_s[jl·B + b] = dh carry              HT·B   ACC
        #   dc_s[jl·B + b] = dc carry              HT·B   ACC
        smem_w = cuda.shared.array(0, STORE_T)
        wt_s = smem_w[:HT * G]
        smem_a = cuda.shared.array(0, ACC_T)
        a0 = (HT * G * STORE_BYTES + ACC_BYTES - 1) // ACC_BYTES
        dh_s = smem_a[a0:a0 + HT * B]
        dc_s = smem_a[a0 + HT * B:a0 + 2 * HT * B]

        # 1. Stage the columns once (consecutive threads read consecutive j of one W_hh row).
        for e in range(tid, G * HT, NT):
            r = e // HT
            jl = e - r * HT
            if jl < nj:
                wt_s[jl * G + r] = w_hh[r, j0 + jl]
        for q in range(tid, HT * B, NT):
            jl = q // B
            b = q - jl * B
            if jl < nj:
                dh_s[q] = ACC(dh_n[b, j0 + jl])
                dc_s[q] = ACC(dc_n[b, j0 + jl])
        cuda.syncthreads()

        groups = NT // LANES
        grp = tid // LANES
        lane = tid - grp * LANES
        npairs = HT * B
        rounds = (npairs + groups - 1) // groups

        for s in range(T + 1):
            # 2. dh carry from the step done before the last barrier: dh_s[p] = dz_{tn}[b] · W_hh[:, j]
            #    (p = jl·B + b). A sequence that was not alive at tn keeps its carry.
            if s > 0:
                tn = s - 1 if reverse else T - s
                for rnd in range(rounds):
                    p = rnd * groups + grp
                    jl = p // B
                    b = p - jl * B
                    active = p < npairs and jl < nj
                    part = ACC(0.0)
                    if active:
                        col = jl * G
                        for r in range(lane, G, LANES):
                            part += dgates[tn, b, r] * ACC(wt_s[col + r])
                    part = group_sum(part, LANES)   # every thread calls it: no branch around it
                    if active and lane == 0 and tn < lengths[b]:
                        dh_s[p] = part
                cuda.syncthreads()
            if s == T:
                break

            # 3. dz_t for the block's (unit, batch) pairs, one owner thread each.
            t = s if reverse else T - 1 - s
            prev = t + 1 if reverse else t - 1
            for q in range(tid, HT * B, NT):
                jl = q // B
                b = q - jl * B
                if jl < nj:
                    j = j0 + jl
                    alive = t < lengths[b]
                    if 0 <= prev < T:
                        c_prev = cells[prev, b, j]
                    else:
                        c_prev = ACC(c0[b, j])
                    i_g = gates[t, b, j]
                    f_g = gates[t, b, H + j]
                    g_g = gates[t, b, 2 * H + j]
                    o_g = gates[t, b, 3 * H + j]
                    tc = tanh(cells[t, b, j])
                    dh_t = dh_s[q]
                    if alive:
                        dh_t += ACC(dy[t, b, j])
                    d_o = dh_t * tc
                    dc_t = dc_s[q] + dh_t * o_g * (ACC(1.0) - tc * tc)
                    if alive:
                        dgates[t, b, j] = dc_t * g_g * i_g * (ACC(1.0) - i_g)
                        dgates[t, b, H + j] = dc_t * c_prev * f_g * (ACC(1.0) - f_g)
                        dgates[t, b, 2 * H + j] = dc_t * i_g * (ACC(1.0) - g_g * g_g)
                        dgates[t, b, 3 * H + j] = d_o * o_g * (ACC(1.0) - o_g)
                        dc_s[q] = dc_t * f_g
                    else:
                        dgates[t, b, j] = ACC(0.0)
                        dgates[t, b, H + j] = ACC(0.0)
                        dgates[t, b, 2 * H + j] = ACC(0.0)
                        dgates[t, b, 3 * H + j] = ACC(0.0)
            grid.sync()                               # dgates[t] complete everywhere

        for q in range(tid, HT * B, NT):
            jl = q // B
            b = q - jl * B
            if jl < nj:
                dh0[b, j0 + jl] = dh_s[q]
                dc0[b, j0 + jl] = dc_s[q]

    return lstm_fwd_kernel, lstm_bwd_kernel


def sim_scratch_bytes(threads: int) -> int:
    """Extra dynamic shared memory a simulator launch needs for ``group_sum``'s scratch (8-byte aligned)."""
    return 8 + 8 * threads


# ---------------------------------------------------------------------------------------------------
# Shared-memory sizes (the launcher passes them as the dynamic shared memory of the launch)
# ---------------------------------------------------------------------------------------------------
def _acc_bytes(store) -> int:
    return 8 if np.dtype(store) == np.float64 else 4


def fwd_shared_bytes(store, H: int, B: int, HT: int) -> int:
    """W_hh rows 4·HT·H (STORE), then z 4·HT·B and c HT·B (ACC)."""
    a = _acc_bytes(store)
    w = -(-4 * HT * H * np.dtype(store).itemsize // a) * a
    return w + 5 * HT * B * a


def bwd_shared_bytes(store, H: int, B: int, HT: int) -> int:
    """W_hh columns HT·4H (STORE), then the dh and dc carries 2·HT·B (ACC)."""
    a = _acc_bytes(store)
    w = -(-HT * 4 * H * np.dtype(store).itemsize // a) * a
    return w + 2 * HT * B * a
