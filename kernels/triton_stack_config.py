"""Launch configuration of the one-launch LSTM stack (kernels/triton_stack.py): a pure function of the shape,
tested without a GPU, and the reasons a stack does not fit (then the module runs today's per-layer launches).

Supports / tested on: host-side Python only (tests/test_stack.py). The GPU rule below was derived from the
single-layer rules (kernels/triton_config.py) and the sm_90 compile of the stack kernel (bench/static_stack.py);
one GPU run (an H200) found its shared-memory bound short for a one-layer backward (fixed, below).

The work split: the programs are divided among the L·D (layer, direction) groups, layer-major
(group g = layer·D + direction), NPG programs per group, each owning HT hidden units of its group in all four
gates, exactly as in the single-layer kernel. A program keeps on chip, for the whole launch:
    forward   W_hh rows of its units [4·HT, H] and, layers ≥ 1, W_ih rows of its units [4·HT, D·H]
    backward  W_hh columns of its units [4H, HT] and, layers < L-1, the columns of the layer above's W_ih
              that multiply its units [D·4H, HT]
so every reduction is over K = NSEG·BLOCK_H, the H-wide segments padded to BLOCK_H (NSEG = 1, D, 4 or 4D).

GPU rule (``gpu_config``; ``unsupported_reason`` says why a stack does not fit):
- tensor cores only (fp16, bf16, fp32 with tf32): fp32-ieee and fp64 run per layer on CUDA cores (their
  broadcast path holds W in registers, which two weight slices per program exceed at useful sizes);
- one 16-row batch tile (B ≤ 16): the cell state stays in registers, no scratch walk per step;
- HT = the smallest power of two ≥ 16 with NPG·L·D ≤ SMs, NPG = cdiv(H, HT) (every program co-resident);
- shared memory: the weight slices plus the widest operand tile, ``dot_shared_bytes`` ≤ SHARED_BUDGET. The
  formula was what the sm_90 compiles (triton 3.6) showed, forward and backward alike, at B16 fp16: 2 layers
  unidirectional H512 144 KB, bidirectional H256 112 KB, bidirectional H512 224 KB; unidirectional H1024 288 KB
  does not fit. It now bounds them: with the fused forward and the backward's dz loaded in one round the
  compiles show 80 / 128 KB (forward / backward, unidirectional H512) and 144 / 192 KB (bidirectional H512),
  no spills in the loops (checked at H 128-512, 1-4 layers, B 1-16, fp16 and bf16). So at HT = 16 a 16-bit
  stack of any depth fits up to H = 512, uni- or bidirectional (a bidirectional backward with an odd number of
  programs per group takes one more, ``StackConfig.backward``: each projecting whole rows, it staged two row
  tiles, 263 KB at H = 272-511, found when that compile was first checked);
- 16-bit: 8 warps, K chunks of 128; tf32: 8 warps, chunks of 64.
CPU (TRITON_INTERPRET=1): one program per group (HT = BLOCK_H), any float dtype but bf16, any batch.
Under ``lstm_gpu.testing.concurrent_programs(n)`` the launcher takes ``gpu_config(..., n_sm=n)`` with the CUDA-core
(broadcast) path allowed, so several programs per group run on CPU with float64 too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .triton_config import (DOT_KC, FOLD_MAX_H, SHARED_PER_SM, fold_pieces, folded_gates, fp32_precision,
                            transposed_gates)

# Bytes of dynamic shared memory one program may take: an SM's 227 KB less the 1 KB of static shared memory
# every sm_90 compile of the stack kernels shows (cuobjdump SHARED).
SHARED_BUDGET = SHARED_PER_SM - 1024

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class StackConfig:
    ht: int                 # hidden units per program (all four gates of them)
    block_h: int            # H padded to a power of two ≥ 16: one segment of every reduction
    block_b: int            # batch rows of the one tile (≥ B)
    use_dot: bool           # tl.dot (tensor cores) or broadcast-multiply-sum (CUDA cores)
    precision: str          # tl.dot input_precision for fp32
    num_warps: int
    programs_per_group: int     # NPG: programs of one (layer, direction), cdiv(H, HT)
    groups: int             # L·D
    kc: int                 # K per tl.dot chunk (a power of two ≤ block_h)
    proj_groups: int = 0    # unidirectional: groups that project the input of layers 1 … L-1 (forward) and the
                            # output gradient of layers 0 … L-2 (backward): L-1 or 0
    backward_npg: int = 0   # the backward's programs per group where they differ (0: the same; ``backward``)

    @property
    def num_programs(self) -> int:
        """The grid of either pass: what must fit the SMs."""
        return self.programs_per_group * (self.groups + self.proj_groups)

    @property
    def projection_halves(self) -> int:
        """Bidirectional layers ≥ 1: 2 where the programs of a group pair up to project each input row in its
        two halves (an even number of them), else 1 (each program projects whole rows for its own units)."""
        return 2 if self.programs_per_group % 2 == 0 else 1

    def backward(self) -> "StackConfig":
        """The backward's configuration: the forward's, with ``backward_npg`` programs per group where set."""
        return replace(self, programs_per_group=self.backward_npg, backward_npg=0) if self.backward_npg else self

    def split(self, nseg: int) -> int:
        """K chunks of a reduction over ``nseg`` segments of block_h (independent tensor-core accumulators);
        1 on the broadcast path."""
        return nseg * self.block_h // self.kc if self.use_dot else 1


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tensor_cores(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and fp32_precision() != "ieee")


def interpreter_config(*, B: int, H: int, L: int, D: int, dtype: torch.dtype) -> StackConfig:
    """CPU interpreter: one program per (layer, direction); programs run one after another in layer-major order,
    and a program only waits for its own group and the layer below, so the sequential run completes."""
    block_h = max(16, _pow2(H))
    use_dot = dtype == torch.float16
    block_b = max(16, _pow2(B)) if use_dot else _pow2(max(B, 1))
    return StackConfig(ht=block_h, block_h=block_h, block_b=block_b, use_dot=use_dot, precision=fp32_precision(),
                       num_warps=4, programs_per_group=1, groups=L * D, kc=min(block_h, DOT_KC) if use_dot else block_h,
                       proj_groups=L - 1 if D == 1 else 0)


def gpu_config(*, B: int, H: int, L: int, D: int, dtype: torch.dtype, n_sm: int) -> StackConfig:
    """The configuration for ``n_sm`` SMs (pure). May not fit: ``unsupported_reason`` checks it."""
    use_dot = tensor_cores(dtype)
    block_h = max(16, _pow2(H))
    min_ht = 16 if use_dot else 4
    ht = min_ht
    while ht < block_h and -(-H // ht) * L * D > n_sm:
        ht *= 2
    ht = min(ht, block_h)
    if use_dot:
        block_b = max(16, _pow2(B))
        half = dtype in (torch.float16, torch.bfloat16)
        # 8 warps either way: 16-bit on 4 until the single layer's backward summed its K chunks spread over the
        # warps; now 8 divide the step's work. Modeled (python -m bench.static_stack, triton 3.6), B16 H512 fp16 2
        # layers, 4 -> 8 warps: forward 2.63 -> 2.36 µs a step unidirectional, 2.43 -> 1.94 bidirectional;
        # backward 5.00 -> 4.16, 5.04 -> 4.13; registers 213-255 -> 143-168, no spills (tests/test_triton_sm90.py).
        num_warps, kc = (8, DOT_KC) if half else (8, DOT_KC // 2)
        kc = min(kc, block_h)
    else:
        block_b, num_warps, kc = _pow2(max(B, 1)), 4, block_h
    npg = -(-H // ht)
    # Unidirectional: a group of its own projects each layer ≥ 1's input, x_t·W_ihᵀ + b, a step ahead of it,
    # where the SMs allow (modeled B16 H512 T1024 fp16, 2 layers: 0.72x -> 0.67x of per-layer launches, 96
    # programs: the layers' step loses its second reduction; 0.60x with the later changes); else the layers
    # ≥ 1 project in their own loop.
    proj = L - 1 if D == 1 and npg * (2 * L - 1) <= n_sm else 0
    # Bidirectional on the tensor cores with an odd number of programs per group: the backward takes one more
    # (its units all masked), so program pairs split the dy projection by direction above. Each program
    # projecting whole rows, the backward staged two row tiles: 263 KB of shared memory at H = 272-511 (B16 fp16,
    # sm_90, triton 3.6), over an SM; paired, 193 KB. The forward keeps its whole-row projection: paired, its
    # time loop reloaded 2 values from local memory (H = 400).
    pad = D == 2 and L > 1 and use_dot and npg % 2 == 1 and (npg + 1) * L * D <= n_sm
    return StackConfig(ht=ht, block_h=block_h, block_b=block_b, use_dot=use_dot, precision=fp32_precision(),
                       num_warps=num_warps, programs_per_group=npg, groups=L * D, kc=kc, proj_groups=proj,
                       backward_npg=npg + 1 if pad else 0)


def recurrence_fold(cfg: StackConfig, dtype: torch.dtype) -> int:
    """2 where the forward's h·W_hhᵀ folds K into M and holds W_hh in registers as the single layer does
    (kernels/triton_lstm.py, ``_load_w_folded``: 16-bit, transposed, 16-row tiles, H ≤ FOLD_MAX_H), with M =
    2·4·HT rows one warpgroup per 64 (HT = 16 on 8 warps, the GPU's configs; the interpreter's one program a
    group has HT = BLOCK_H and no warps to fill); else 1."""
    rows_fit = 8 * cfg.ht == 16 * cfg.num_warps or cfg.programs_per_group == 1
    # BLOCK_H ≥ 32: each half of it one piece of K ≥ 16 or more (``fold_pieces``: exactly BLOCK_H / 2, so no fold
    # reads past its row into the next segment, which ``_seg`` would take for another direction's)
    folds = (cfg.use_dot and transposed_gates() and folded_gates() and dtype in (torch.float16, torch.bfloat16)
             and cfg.block_b == 16 and 32 <= cfg.block_h <= FOLD_MAX_H and rows_fit)
    return 2 if folds else 1


def dot_shared_bytes(cfg: StackConfig, *, L: int, D: int, dtype: torch.dtype, backward: bool = True) -> int:
    """Shared memory of one program as the sm_90 compiles show it: its weight slices, staged once (forward and
    backward hold the same weights, rows or columns: 4·HT x K, K = H + D·H padded), and one buffer for the
    widest operand tile (BB x D·H padded: the input row of layers ≥ 1, or one gate of the dz above)."""
    elem = 2 if dtype in (torch.float16, torch.bfloat16) else 4
    widest = cfg.block_h * (D if L > 1 else 1)
    # the backward of a bidirectional stack with an odd number of programs per group (each projects whole rows)
    # staged two such tiles: 256 KB at H = 272-511, 128 KB at H = 129-255 (B16 fp16, sm_90, triton 3.6)
    tiles = 2 if backward and D == 2 and L > 1 and cfg.projection_halves == 1 else 1
    if backward and (L == 1 or (D == 1 and not cfg.proj_groups)):
        # a backward that multiplies a whole dz row in its loop stages it, BB x 4·BLOCK_H: one layer (its own dz:
        # 64 / 128 / 256 KB at H = 256 / 512 / 600-1024, B 1 and 16, fp16, either direction count) and a
        # unidirectional stack without projection groups (each layer's dy from the dz above: 192 KB at 3 layers,
        # H = 512, B = 5; sm_90, triton 3.6). Counted as the forward's tile, it passed a bidirectional H = 768
        # layer that a GPU then refused (256 KB, 2026-11-28)
        widest = 4 * cfg.block_h
    # and the compiler's scratch for exchanges between the warps, which the tiles cover except at the smallest sizes
    # (8 warps, one bidirectional layer at H = 64: 12 KB against 10 KB of tiles; sm_90, triton 3.6)
    scratch = 256 * cfg.num_warps
    total = (4 * cfg.ht * (cfg.block_h + (cfg.block_h * D if L > 1 else 0)) + tiles * cfg.block_b * widest) * elem
    if not backward and recurrence_fold(cfg, dtype) > 1:
        # folded, W_hh goes to registers through an identity product before the time loop, which stages a KC x KC
        # identity and one piece of the weights at once: 64 KB at KC = 128, more than a small layer's weights
        # (one bidirectional layer at H = 200-256: 65 KB against 43 KB counted; sm_90, triton 3.6)
        kc = fold_pieces(cfg.block_h)[1]
        total = max(total, (kc * kc + 8 * cfg.ht * kc) * elem)
    return total + scratch


def unsupported_reason(*, device: torch.device, dtype: torch.dtype, hidden_size: int, num_layers: int,
                       bidirectional: bool, batch: int, proj_size: int = 0, n_sm: int | None = None) -> str | None:
    """Why the one-launch stack cannot run this call, or None. Every reason means: per-layer launches instead."""
    from . import host
    if proj_size:
        return "proj_size > 0: the one-launch stack has no projection (the per-layer launches fold it into W_hh)"
    reason = host.common_unsupported("triton", device=device, dtype=dtype, dtypes=DTYPES)
    if reason is not None:
        return reason
    if device.type != "cuda":      # the interpreter (CPU), or meta (shapes only: the dtypes a GPU runs)
        if dtype == torch.bfloat16 and device.type == "cpu":
            return "bfloat16 is not supported by the Triton CPU interpreter (it stores bf16 as raw uint16)"
        return None
    if n_sm is None:
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    L, D = num_layers, 2 if bidirectional else 1
    if not tensor_cores(dtype):
        return (f"the stack kernel runs on tensor cores only (float16, bfloat16, float32 with tf32), got {dtype} "
                f"with fp32 precision {fp32_precision()!r}")
    if batch > 16:
        return f"batch {batch} > 16: the stack kernel keeps the whole batch in one 16-row tile"
    cfg = gpu_config(B=batch, H=hidden_size, L=L, D=D, dtype=dtype, n_sm=n_sm)
    need = max(dot_shared_bytes(cfg, L=L, D=D, dtype=dtype, backward=False),
               dot_shared_bytes(cfg.backward(), L=L, D=D, dtype=dtype, backward=True))
    if cfg.num_programs > n_sm:
        return (f"{L} layer(s) x {D} direction(s) x {cfg.programs_per_group} programs (HT={cfg.ht}) = "
                f"{cfg.num_programs} programs, more than the {n_sm} SMs")
    if need > SHARED_BUDGET:
        return (f"the weight slices of one program (W_hh{' and W_ih' if L > 1 else ''} rows of {cfg.ht} units, "
                f"K = {cfg.block_h * (1 + (D if L > 1 else 0))}) and its operand tiles need {need} bytes of shared "
                f"memory, over the budget of {SHARED_BUDGET}")
    return None
