"""Launch configuration of the Triton LSTM kernels: tile sizes, path, grid, and what does not fit.

Supports / tested on: pure host-side Python; the GPU rules were chosen from sm_90 compiles of exactly
what launches (tests/test_triton_sm90.py: no spills, ≤ 227 KB shared memory, co-resident) and the static
profiler's model (``python -m bench.static``); the h / dz exchange rule was then corrected by the first GPU
measurement (an H200, 2026-11-28; below). Known risk: the other rules still rest on the model.

Rules (GPU), each checked by compiling every chosen config for sm_90 (tests/test_triton_sm90.py):
- path: ``tl.dot`` (tensor cores) for fp16/bf16, and fp32 with tf32 precision, at every batch size, while
  the four gates' W_hh blocks plus one operand tile fit the shared-memory budget (DOT_SHARED_BUDGET,
  ``dot_shared_bytes``): H ≤ 1536 in 16 bits, K covered by at most two power-of-two pieces
  (``k_pieces``: 1536 = 1024 + 512, 224 KB of shared memory). Compiled with the run-time specialisation,
  K = 1024 takes 254 registers at 4 warps and no spills (without the divisibility hints it spilled, which
  is why the old rule stopped at K = 256). fp32-ieee takes tl.dot too, in IEEE fp32: FMAs on CUDA cores,
  each thread reducing over all of K (no shuffles), 4 warps, K unsplit, where its sm_90 compile has no spills
  (H ≤ 768 forward, ≤ 512 backward: FMA_MAX_H; B a multiple of 16, or forward 8 ≤ B < 16). Otherwise fp32-ieee and fp64 use the register
  broadcast-multiply-sum, one batch tile of BLOCK_B rows at a time (looped inside the program when B is larger;
  five shuffle levels per output).
- HT (hidden units per program, all four gates) is the smallest power of two that keeps the grid
  cdiv(H, HT) ≤ the SM count (one program per SM); ≥ 4, and ≥ 16 on the tensor cores (N of each gate's dot);
  but 8 for a tf32 forward where 16 units' fp32 weights do not fit (H 769-1024: the four gates fused, N = 32).
- Dot path (see ``gpu_config``): 16-row batch tiles; 16-bit: 4 warps (8 folded, and in the backward), tf32: 8 (4 on
  8 units); K in chunks of 64,
  at most 8 (the tail piece in as many chunks as the first). The 16-bit forward takes 32-row tiles at 8 warps where a batch group has 32 rows or more.
  The forward fuses the four gates into one dot per piece of K (``fused_pieces``: at most 4 pieces) wherever
  the weights and all of h's pieces fit the shared-memory budget (not H = 1536); the backward issues the
  loads of dz_t for the four gates at once where their tiles fit beside the weights (``dz_one_round``).
- Batch groups (both paths): SMs the unit split leaves idle take part of the batch. groups =
  min(SMs // unit programs, batch tiles), the tiles shared out evenly, no group empty; each group runs
  the unit split on its own rows with its own step counter, so num_programs = unit programs × groups.
- Broadcast path num_warps: 4 while the W_hh slice (4·HT·K elements, 32-bit registers; fp64 two registers
  each) takes ≤ 128 registers per thread, else 8; never 16 (at 512 threads every thread is capped at 128
  registers and the kernels spilled). A tiny slice (≤ 32 registers per thread at 4 warps, i.e.
  H ≤ 256): 2 warps and BLOCK_B ≤ 2, the only choice that compiled without a stack frame on both
  triton 3.6 (the GPU machine's version) and 3.9 for every dtype, direction and H in {64, 128, 256}.
- BLOCK_B (broadcast path): 4 rows while the weights take ≤ 32 registers per thread, 2 up to 64, else 1
  (fp64: at most 2).
- Unsupported (auto falls back to cuDNN): a dot-path slice over the shared-memory budget that the
  broadcast path cannot hold either (W_REG_BUDGET = 32K registers per program), i.e. on 132 SMs H > 1536
  for fp16/bf16, H > 1024 for fp32 and H > 528 for fp64.
CPU (TRITON_INTERPRET=1): one program (HT = H), no barrier.

fp32 matmul precision: ``FP32_PRECISION`` below if set, else the environment variable TRITON_F32_DEFAULT,
else "ieee" (exact fp32, CUDA cores). "tf32" uses tensor cores with a 10-bit mantissa, as cuDNN does by
default (torch.backends.cudnn.rnn.fp32_precision).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from . import host

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FP32_PRECISION: str | None = None           # "ieee" | "tf32" | "tf32x3"; None: TRITON_F32_DEFAULT or "ieee"
POLLED_H: bool | None = None                # forward h exchange polled (see LSTMConfig.polled_h): True / False
                                            # force it on / off; None: the environment variable
                                            # LSTM_GPU_POLLED_H=1 / 0 does, else gpu_config's rule (the default)
FUSED_GATES: bool | None = None             # forward tl.dot fused over the gates (LSTMConfig.pieces); None: on
                                            # unless the environment variable LSTM_GPU_FUSED_GATES=0 (a
                                            # measurement switch: the per-gate dots are what it replaced)
TRANSPOSED_GATES: bool | None = None        # fused forward computed transposed (LSTMConfig.transposed) where
                                            # the rule in gpu_config allows; None: on unless the environment
                                            # variable LSTM_GPU_TRANSPOSED_GATES=0 (a measurement switch)
FOLDED_GATES: bool | None = None            # fused forward with K folded into M, W_hh in registers
                                            # (LSTMConfig.fold) where the rule in gpu_config allows; None: on
                                            # unless the environment variable LSTM_GPU_FOLDED_GATES=0 (a
                                            # measurement switch)

H100_SMS = 132                              # SMs of an H100 SXM, the design target
REGS_PER_SM = 64 * 1024                     # 32-bit registers per SM (sm_80 .. sm_90)
MAX_REGS_PER_THREAD = 255
SHARED_PER_SM = 227 * 1024                  # bytes of shared memory one block may use on sm_90
# Registers one program may spend on its W_hh slice: about half the register file, measured on sm_90
# compiles (the rest holds h, the products, addresses and the cell state). 32-bit words.
W_REG_BUDGET = 32 * 1024
DOT_SHARED_BUDGET = 225 * 1024              # bytes: the W_hh slice + one staged operand tile on the tl.dot path
                                            # (the 227 KB a block may have, less the 1 KB static the sm_90
                                            # compiles show beside it and a margin)
DOT_KC = 128                                # K per tl.dot chunk: K/128 independent accumulators
FUSED_MAX_PIECES = 4                        # the fused forward's pieces of K (kernels/triton_lstm.py has four)
# K folded into M (LSTMConfig.fold): the largest H, and K per piece. W_hh takes H/8 registers a thread (96 at
# H = 768: 246 registers in all, no stack; 128 at H = 1024: 255 and a 128-byte stack frame used before the time loop
# only, none inside it; sm_90, triton 3.6).
FOLD_MAX_H = 1024
FOLD_KC = 128
# fp32-ieee on CUDA cores: tl.dot in IEEE fp32 (FMAs, each thread reducing over all of K: no shuffles) where
# the sm_90 compile keeps the loop free of spills: H ≤ 768 forward (triton 3.6, the GPU machine's; 512 with
# 3.9), H ≤ 512 backward (H = 768
# backward spilled 92-5160 local accesses per step in every variant tried: HT 8/16, 4/8 warps, K as 1024,
# 512 + 256 or 256 + 512), and a batch that is a multiple of 16 rows, or forward one tile of ≥ FMA_MIN_ROWS
# (rows masked off in the backward, B = 8, 12, 20, spilled 31-86 accesses per step; in the forward's
# several tiles, B = 20 at H = 768, 220). Modeled B16 H768 forward 20.63 -> 4.14 µs/step, B16 H512 backward
# 13.41 -> 5.81. Fewer rows: the broadcast path (tl.dot computes 16 rows whatever the batch: B4 H512
# forward 2.58 against 2.36 µs/step).
FMA_MIN_ROWS = 8
FMA_MAX_H = {"fwd": 768, "bwd": 512}
FMA_MAX_H_OTHER_TRITON = 512    # forward, a triton other than 3.6 (3.9 spilled 600 accesses per step at H = 768)


def _triton_version() -> str:
    """The triton in use (imported, or else installed: this module is plain host code and imports none)."""
    import sys
    from importlib import metadata
    if "triton" in sys.modules:
        return getattr(sys.modules["triton"], "__version__", "")
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return ""


def fma_max_h(backward: bool) -> int:
    """The largest H the FMA tl.dot path takes: what compiled without spills with the installed triton."""
    if backward or _triton_version().startswith("3.6"):
        return FMA_MAX_H["bwd" if backward else "fwd"]
    return FMA_MAX_H_OTHER_TRITON


@dataclass(frozen=True)
class LSTMConfig:
    ht: int             # hidden units per program (power of two)
    block_k: int        # K (the reduction over h): a power of two; with k_tail, its first piece
    block_b: int        # batch rows per tile
    use_dot: bool       # tl.dot path (else broadcast-multiply-sum)
    precision: str      # tl.dot input_precision for fp32
    num_warps: int
    num_programs: int   # grid size
    k_split: int = 1    # tl.dot: K chunks (independent accumulators); 1 on the broadcast path
    batch_groups: int = 1   # the batch split in groups of rows, each run by its own set of programs
    group_rows: int = 0     # rows per batch group (a multiple of block_b); 0: the whole batch
    polled_h: bool = False  # forward, 16-bit tl.dot path: h in write-once slots the readers poll, no counter
    k_tail: int = 0         # tl.dot: a second, smaller power-of-two piece of K after block_k (0: none), so
                            # block_k + k_tail covers H with less padding: H = 1536 as 1024 + 512, not 2048;
                            # in k_split chunks too, whose products add to the first piece's chunk by chunk
    dz_one_round: bool = False      # backward, tl.dot: the loads of dz_t for all four gates issued together
    pieces: int = 0         # forward, tl.dot: the four gates in one dot per piece of K, K = pieces x block_k
                            # (0: per gate, in k_split chunks)
    transposed: bool = False    # fused forward: the gates computed transposed, [4·HT, BB] = W · hᵀ, so that
                                # M = 4·HT = 64 fills Hopper's warpgroup MMA (wgmma)
    fold: int = 1           # transposed fused forward, 16-bit: 2 = K folded into M, [2·4·HT, K/2] (each
                            # warpgroup one half of K), the weights held in registers as the MMA's A operand
                            # (kernels/triton_lstm.py, ``_load_w_folded``); K = 2 x pieces x block_k

    @property
    def k_total(self) -> int:
        """The K covered on chip: (fold x) pieces x block_k, or block_k + k_tail (≥ H; the rest is masked
        padding)."""
        return self.fold * self.pieces * self.block_k if self.pieces else self.block_k + self.k_tail

    def shared_bytes(self, dtype: torch.dtype) -> int:
        """Shared memory of the tl.dot path (``dot_shared_bytes``): the fused forward stages all of h's
        pieces at once (one wait for all of them), the per-gate path one piece at a time."""
        if self.pieces:
            return dot_shared_bytes(self.ht, self.k_total, self.block_b, dtype)
        return dot_shared_bytes(self.ht, self.block_k, self.block_b, dtype, self.k_tail, 4 if self.dz_one_round else 1)

    def rows_per_group(self, B: int) -> int:
        return self.group_rows or B

    def polled_exchange(self, dtype: torch.dtype) -> bool:
        """Whether the forward exchanges h polled (``polled_h``, 16-bit h on the tl.dot path only: a slot per
        step, written once, polled by the readers until no element is unwritten; no step counter, no fence)
        rather than through two slots and the step counter. The launcher uses it for one-tile launches only:
        with two tiles per program it spilled 6-8 local accesses per step inside the loop (sm_90, 3.6)."""
        return self.polled_h and self.use_dot and dtype in (torch.float16, torch.bfloat16)

    def polled_backward(self, dtype: torch.dtype) -> bool:
        """Whether the backward exchanges dz polled (``polled_h``): 16-bit dz in a slot per step, written once,
        polled by the readers, no step counter; where its loads of all four gates go out together
        (``dz_one_round``). The launcher uses it for one-tile launches only."""
        return self.polled_h and self.low_exchange(dtype) and self.dz_one_round and self.use_dot

    def tail_after(self, dtype: torch.dtype) -> bool:
        """Whether the forward reads h's tail piece of K only after the first piece's products (kernels/
        triton_lstm.py, ``_h_w``): where both h tiles staged at once would not fit beside the weights."""
        elem = 2 if dtype in (torch.float16, torch.bfloat16) else 4
        both = (4 * self.ht + self.block_b) * self.k_total * elem
        return self.k_tail > 0 and both > DOT_SHARED_BUDGET

    def low_exchange(self, dtype: torch.dtype) -> bool:
        """Whether backward exchanges dz in the 16-bit input dtype (the tensor cores read it so anyway)."""
        return self.use_dot and dtype in (torch.float16, torch.bfloat16)

    def w_words(self, dtype: torch.dtype) -> int:
        """32-bit registers the W_hh slice needs: 16-bit weights stay packed on the dot path."""
        elems = 4 * self.ht * self.k_total
        if dtype == torch.float64:
            return 2 * elems
        if self.use_dot and dtype in (torch.float16, torch.bfloat16):
            return elems // 2
        return elems


def fp32_precision() -> str:
    return FP32_PRECISION or os.environ.get("TRITON_F32_DEFAULT") or "ieee"


def fused_gates() -> bool:
    """Whether the configs fuse the forward's four gates into one tl.dot per piece of K (the default)."""
    return FUSED_GATES if FUSED_GATES is not None else os.environ.get("LSTM_GPU_FUSED_GATES", "1") != "0"


def transposed_gates() -> bool:
    """Whether the configs may compute the fused forward transposed (wgmma on Hopper; the default)."""
    if TRANSPOSED_GATES is not None:
        return TRANSPOSED_GATES
    return os.environ.get("LSTM_GPU_TRANSPOSED_GATES", "1") != "0"


def folded_gates() -> bool:
    """Whether the configs may fold K into M where the rule allows (the default; ``LSTMConfig.fold``)."""
    if FOLDED_GATES is not None:
        return FOLDED_GATES
    return os.environ.get("LSTM_GPU_FOLDED_GATES", "1") != "0"


def fold_pieces(H: int) -> tuple[int, int]:
    """K of the folded forward: (pieces, K per piece) covering each half of K, ceil(H/2), in pieces of
    FOLD_KC (or the one power of two ≥ 16 that covers a smaller half): 768 = 2 x 3 x 128, 512 = 2 x 2 x 128,
    256 = 2 x 1 x 128, 40 = 2 x 1 x 32. Each piece is one staging of h and one wait for its products (the
    pieces chain into one accumulator), so fewer is better; the identity product that puts a piece in
    registers stages a KC x KC matrix once (32 KB at 128)."""
    half = -(-H // 2)
    kc = min(FOLD_KC, max(16, _pow2(half)))
    return -(-half // kc), kc


def polled_h() -> bool | None:
    """The polled h exchange forced on (True) or off (False) by ``POLLED_H`` or LSTM_GPU_POLLED_H (a
    measurement switch), or None: the configs' rule decides (``gpu_config``, ``interpreter_config``)."""
    if POLLED_H is not None:
        return POLLED_H
    env = os.environ.get("LSTM_GPU_POLLED_H", "")
    return None if env == "" else env == "1"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def interpreter_config(*, B: int, H: int, dtype: torch.dtype, use_dot: bool | None = None,
                       backward: bool = False) -> LSTMConfig:
    """The one-program configuration the CPU interpreter runs (no barrier: programs run one by one): the
    GPU's paths, the forward's tensor-core dot fused over the gates (``fused_pieces``) as on the GPU."""
    k = max(16, _pow2(H))
    if use_dot is None:
        use_dot = dtype in (torch.float16, torch.bfloat16)
    bb = 16 if use_dot else min(4, _pow2(B))
    block_k, k_tail = k_pieces(H) if use_dot else (k, 0)
    k_split, pieces = max(1, block_k // DOT_KC) if use_dot else 1, 0
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or fp32_precision() != "ieee"
    if use_dot and tensor_cores and not backward and fused_gates():
        (pieces, block_k), k_tail, k_split = fused_pieces(H), 0, 1
    transposed = pieces > 0 and transposed_gates()
    forced = polled_h()     # as on the GPU: polled where the fused product is transposed and the batch one tile,
    half = dtype in (torch.float16, torch.bfloat16)     # and in the backward where dz's loads go out together
    dz_one_round = use_dot and tensor_cores and backward
    polled = forced if forced is not None else ((transposed or dz_one_round) and B <= bb and half)
    fold = 1
    if transposed and half and H <= FOLD_MAX_H and folded_gates():     # as on the GPU (gpu_config)
        (pieces, block_k), fold = fold_pieces(H), 2
    return LSTMConfig(ht=k, block_k=block_k, block_b=bb, use_dot=use_dot, precision=fp32_precision(),
                      num_warps=4, num_programs=1, k_split=k_split, polled_h=polled, k_tail=k_tail,
                      pieces=pieces, dz_one_round=dz_one_round, transposed=transposed, fold=fold)


def k_pieces(H: int) -> tuple[int, int]:
    """K of the tl.dot path in at most two power-of-two pieces (block_k, k_tail): the next power of two,
    or, where that pads more than a quarter, half of it plus the smallest power of two that covers the rest,
    at least a quarter of the half and 16 (the tail is cut in as many chunks as the first piece, ≤ 8, and each
    keeps tl.dot's K ≥ 16): 768 = 512 + 256, 1536 = 1024 + 512, 1100 → 1024 + 256, 40 → 32 + 16. Padding is
    shared memory and MMAs spent on zeros (a quarter of both at H = 768 as one 1024 piece)."""
    k = max(16, _pow2(H))
    half = k // 2
    tail = max(16, half // 4, _pow2(H - half)) if H > half else 0
    return (half, tail) if 0 < tail < half else (k, 0)


def fused_pieces(H: int) -> tuple[int, int]:
    """K of the fused forward (the four gates in one tl.dot per piece of K): (pieces, K per piece), the
    smallest power-of-two piece (≥ 16) that covers H in at most FUSED_MAX_PIECES pieces: 768 = 3 x 256, 1024 =
    4 x 256, 1536 = 3 x 512, 40 = 3 x 16. A piece is its own accumulator, so the chain of dependent MMAs is
    K per piece / 16 long."""
    kc = 16
    while -(-H // kc) > FUSED_MAX_PIECES:
        kc *= 2
    return -(-H // kc), kc


def dot_shared_bytes(ht: int, block_k: int, block_b: int, dtype: torch.dtype, k_tail: int = 0,
                     gates: int = 1) -> int:
    """Shared memory of the tl.dot path: the four gates' W_hh blocks (4·HT·(K + K_TAIL), staged once) and
    one operand tile of h (forward) or of one gate's dz (backward), BB·K, in the operand dtype (the tail
    piece's smaller tile reuses it: the compiler allocates by liveness, checked on the sm_90 compiles);
    ``gates`` = 4 (backward, ``dz_one_round``): the four gates' dz tiles, tails included, staged at once."""
    elem = 2 if dtype in (torch.float16, torch.bfloat16) else 4
    operand = block_b * block_k if gates == 1 else gates * block_b * (block_k + k_tail)
    return (4 * ht * (block_k + k_tail) + operand) * elem


def gpu_config(*, B: int, H: int, dtype: torch.dtype, n_sm: int = H100_SMS, backward: bool = False) -> LSTMConfig:
    """The configuration for a CUDA device with ``n_sm`` SMs (a pure function: tested without a GPU), of the
    forward kernel or (``backward``) the backward one: they differ only in the forward's 32-row tiles."""
    precision = fp32_precision()
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and precision != "ieee")
    block_k = max(16, _pow2(H))
    # tl.dot (tensor cores) at every batch size (the batch padded to 16 rows) wherever the W_hh slice
    # staged in shared memory fits: compiled with the run-time specialisation, K = 1024 at HT = 16 takes
    # 126 registers, no spills (tests/test_triton_sm90.py); N = HT per gate ≥ 16 for triton 3.6
    ht_dot = min(max(16, _pow2(-(-H // n_sm))), max(16, _pow2(H)))
    half = dtype in (torch.float16, torch.bfloat16)     # 16-bit operands (else tf32: 32-bit operands)
    dot_k, dot_tail = k_pieces(H)
    use_mma = tensor_cores and dot_shared_bytes(ht_dot, dot_k, 16, dtype, dot_tail) <= DOT_SHARED_BUDGET
    # tf32 (32-bit operands) at H 769-1024 forward: 16 units per program do not fit (W_hh alone is 256 KB at
    # H = 1024), 8 do with the four gates fused ([BB, 4·8] per piece of K: N = 32 ≥ 16; W 128 KB + an h tile 64
    # KB), 128 programs. MEASURED before (H200, reports/data/gpu-nvidia-h200-headline.csv): B64 H1024 on the
    # broadcast path (CUDA cores, the batch a row at a time) 151 µs/step, cuDNN 21.4. The backward's dh has N = HT
    # = 8 per program (< 16 for tl.dot): it stays on the broadcast path.
    narrow = -(-H // 8)
    if (tensor_cores and not use_mma and not backward and fused_gates() and narrow <= n_sm
            and dot_shared_bytes(8, math.prod(fused_pieces(H)), 16, dtype) <= DOT_SHARED_BUDGET):
        ht_dot, use_mma = 8, True
    fma = (dtype == torch.float32 and not tensor_cores and H <= fma_max_h(backward)
           and (B % 16 == 0 or (not backward and FMA_MIN_ROWS <= B < 16)))
    use_dot = use_mma or fma
    k_tail = dot_tail if use_dot else 0
    if use_dot:
        block_k = dot_k
    ht = ht_dot if use_mma else min(max(4, _pow2(-(-H // n_sm))), _pow2(H))
    num_programs = -(-H // ht)
    words = LSTMConfig(ht, block_k, 1, use_dot, precision, 4, num_programs, k_tail=k_tail).w_words(dtype)
    # 4 warps while the weights take ≤ 128 registers per thread, else 8 (16 warps would cap every thread
    # at 128 registers in all and spill)
    num_warps = 4 if words <= 128 * 32 * 4 else 8
    k_split = 1
    if use_dot:
        # Chosen with the static profiler (python -m bench.static; modeled, not measured) and the sm_90
        # compile of every config with triton 3.6, the GPU machine's version (tests/test_triton_sm90.py):
        # - 16-bit: 16-row tiles, 4 warps. B16 H768 fp16 forward 1.87 µs/step vs 2.50 at 8 warps (the
        #   activations run on every warp's copy of the reduced tile, so fewer warps issue fewer
        #   instructions). 32-row tiles modeled faster at B64 but spilled 18-562 local accesses per step
        #   inside the time loop with triton 3.6 (not with 3.9).
        # - tf32 (32-bit operands): 16-row tiles, 8 warps (unsplit K = 128 spilled 16-32 bytes).
        # - Both: K in chunks of 64, at most 8 (B16 H768 fp16 forward 1.46 -> 1.45 µs/step against chunks of
        #   128; 16 chunks spilled at H = 1536).
        block_b = 16                                    # M ≥ 16 for tl.dot on triton 3.6
        # (tf32 on 8 units a program, H 769-1024: 4 warps. Modeled, B 1 / 16 / 64 H1024 inference forward: 2.87 /
        # 4.49 / 18.9 µs/step on 4 warps, 3.57 / 5.98 / 24.2 on 2, 4.60 / 6.10 / 23.4 on 8; all three without spills.)
        num_warps = 4 if half or fma or ht == 8 else 8
        # FMA: K in one chunk (2-8 chunks spilled 171-1069 accesses per step at B16 H768)
        k_split = 1 if fma else min(8, max(1, block_k // (DOT_KC // 2)))
    else:
        tiny = words <= 32 * 32 * 4                     # ≤ 32 weight registers per thread at 4 warps
        if tiny:
            num_warps = 2
        per_thread = words // (32 * num_warps)          # weight registers per thread
        block_b = 4 if per_thread <= 32 else 2 if per_thread <= 64 else 1
        if dtype == torch.float64 or tiny:
            block_b = min(block_b, 2)                   # fp64 products take two registers each
        block_b = min(block_b, _pow2(B))
    # Batch groups: SMs the unit split leaves idle take more of the batch. The programs of group q run
    # rows [q·R, (q+1)·R) as an independent recurrence (h of those rows only), so each walks fewer tiles per
    # step: B64 H1024 bf16 forward modeled 7.69 µs/step in one group of 4 tiles, ... in 2 groups of 2.
    tiles = -(-max(B, 1) // block_b)
    groups = min(max(1, n_sm // num_programs), tiles)
    tiles_per_group = -(-tiles // groups)
    groups = -(-tiles // tiles_per_group)                # no empty group
    # Forward, 16 bits, a batch group of 32 rows or more (an even number of 16-row tiles): 32-row tiles at
    # 8 warps, the same groups. Modeled (python -m bench.static, triton 3.6): B64 H1024 bf16 inference
    # forward 4.51 -> 3.77 µs/step (one serial h load per step instead of two, half the per-tile work), B64
    # H768 fp16 3.80 -> 3.06; at 4 warps ptxas kept 1-7 values in local memory inside the time loop. The
    # backward's 32-row tiles spilled 174 accesses per step: it keeps 16-row tiles.
    # Backward on the tensor cores: the loads of dz_t for all four gates issued together where their staged
    # tiles fit beside the weights (H ≤ 768 at 16 bits), else gate by gate: each gate's loads left only once
    # the previous gate's data came back, one serial L2 round trip each (sm_90 SASS, triton 3.6). Modeled
    # (python -m bench.static): B16 H768 fp16 backward 4.13 -> 2.52 µs/step (8 rounds -> 1). Two gates at a
    # time (H = 1024: 192 KB) kept 3 values in local memory inside the loop at B = 2 and gained 0.05 µs at 8 warps.
    dz_one_round = use_mma and backward and dot_shared_bytes(ht, block_k, 16, dtype, k_tail, 4) <= DOT_SHARED_BUDGET
    # Forward on the tensor cores: the four gates in one tl.dot per piece of K (``fused_pieces``) wherever
    # all of h's pieces fit beside the weights. Modeled (python -m bench.static, triton 3.6, before the model
    # counted shared memory): B16 H768 fp16 inference forward 1.45 -> 1.29 µs/step, B64 H1024 bf16 3.77 -> 3.17
    # (with it: per gate 2.19 vs fused 1.78 at B16 H768, 2 warps below): the per-gate dots, 8 warps on K
    # chunks, summed their chunks across the warps through shared memory and shuffles (about half the
    # instructions of the step: 1218 -> 674 per warp at B64 H1024), and every warp then ran the activations
    # on a copy of the reduced tile; the fused dot spreads [BB, 4·HT] over the warps, nothing to sum across
    # them. H = 1536 (192 KB of weights + a 48 KB h tile) does not fit: per gate, K as 1024 + 512.
    pieces = 0
    fused = fused_pieces(H)
    if (use_mma and not backward and fused_gates()
            and dot_shared_bytes(ht, fused[0] * fused[1], 16, dtype) <= DOT_SHARED_BUDGET):
        pieces, block_k, k_tail, k_split = fused[0], fused[1], 0, 1
    if (use_dot and half and not backward and tiles_per_group % 2 == 0
            and dot_shared_bytes(ht, pieces * block_k if pieces else block_k, 32, dtype,
                                 0 if pieces else k_tail) <= DOT_SHARED_BUDGET):
        block_b, num_warps, tiles_per_group = 32, 8, tiles_per_group // 2
    # The fused forward transposed, [4·HT, BB] = W · hᵀ: M = 4·HT = 64 is one warpgroup MMA (HGMMA), which
    # reads W and hᵀ from shared memory once per warpgroup; the [BB, 4·HT] product (mma.sync, N spread over
    # the warps) has every warp ldmatrix all of h and its quarter of W each step. Shared memory per step per
    # SM, modeled (python -m bench.static, triton 3.6, 128 B/cycle): B16 H768 fp16 222 -> 154 KB, B64 H1024
    # bf16 716 -> 404 KB (step 5.60 -> 4.21 µs), B16 H512 150 -> 106 KB (1.53 -> 1.33). Where it kept values in
    # local memory inside the loop, it is not used: ptxas holds the wgmma descriptors (4 registers per HGMMA,
    # 48 HGMMA at K = 768) in registers across the loop, 36-80 spilled accesses per step at K ≥ 768 on 4 warps,
    # and 16 for the fp16 training forward at K = 1024 on 8 warps (bf16 clean). (The polled forward below is
    # transposed on 4 warps at K = 768-1024 with none: 216-255 registers, no step counter in the loop.)
    K = pieces * block_k
    transposed = (pieces > 0 and 4 * ht == 64 and transposed_gates()
                  and (K <= 512 or (num_warps == 8 and (K <= 768 or dtype == torch.bfloat16))))
    # The h exchange polled (``LSTMConfig.polled_h``: each step's h in a write-once slot, polled by the readers;
    # no fence, no step counter: one L2 round trip a step instead of three) where a batch group is one 16-row
    # tile and the fused product fits transposed on 4 warps (K ≤ 1024, below): all of h's pieces polled together, the
    # next step's gates_x issued before the poll. Modeled (python -m bench.static, triton 3.6), counter ->
    # polled: B16 H768 fp16 forward 1.78 -> 1.17 µs/step (training forward 1.82 -> 1.21), B16 H1024 bf16
    # 2.45 -> 1.56, B1 H256 1.01 -> 0.51, B16 H512 1.33 -> 0.82; no spills (117-255 registers). The rule's limits
    # were read in the SASS of its first form, h in 32-bit words tagged with the step (kernels/triton_lstm.py's
    # exchange comment): not with several tiles per group (6-8 spills a step) nor on 2 warps (8-33 spilled
    # accesses per step). The counter's
    # fence is the model's assumption: the GPU session's "triton-counter" column measures the other exchange.
    # K = 1024 with triton 3.6 only (the GPU machine's; 3.9 reloaded 34-38 values a step at B = 16), and in fp16
    # only where B is 1 (a constant) or a multiple of 16 (B = 2, 5, 8 kept 4-16 values in local memory; bf16 clean).
    forced = polled_h()
    k_ok = K <= 768 or (K <= 1024 and _triton_version().startswith("3.6")
                        and (dtype == torch.bfloat16 or B == 1 or B % 16 == 0))
    one_16 = (pieces > 0 and 4 * ht == 64 and half and block_b == 16 and tiles_per_group == 1 and k_ok
              and transposed_gates())
    # (Modeled, polled where a batch group is one 32-row tile too: B64 H1024 bf16 4.21 -> 3.70 µs/step, no spills;
    # measured the other way round, below. Forced, it still polls there.)
    # The backward's dz exchange polled likewise (``LSTMConfig.polled_backward``: 16-bit dz in a slot per step)
    # where a batch group is one 16-row tile and all four gates' dz loads go out together (H ≤ 768): B16 H768
    # fp16 backward 3.47 -> 3.08 µs/step (forward + backward 4.68 -> 4.29), B16 H512 2.28 -> 1.77. With a tail
    # piece of K (H = 768: 512 + 256) on 8 warps: on 4 its eight polled tiles kept 38-53 values in local memory
    # inside the loop (B16 / B5); without a tail 4 warps compile clean (8: H512 1.77 -> 2.14, shared memory).
    one_bwd = backward and dz_one_round and half and block_b == 16 and tiles_per_group == 1
    # MEASURED (H200, triton 3.6, 2026-11-28, reports/data/gpu-nvidia-h200-headline.csv: "triton" polled where
    # this rule then chose it, "triton, step counter" the counter), µs/step p50, polled vs counter: B16 H768 fp16
    # forward 3.21 vs 3.27, bf16 3.19 vs 3.27; B1 H256 fp16 forward 1.94 vs 1.86; B64 H1024 bf16 forward (one 32-row tile)
    # 6.50 vs 5.12; B16 H768 fp16 forward + backward (one_bwd) 11.9 vs 8.77. The model had the poll ahead in all
    # five; the GPU only in the first two. So polled only there, 16-row tiles of 9-16 rows; the rest counts
    # steps (``POLLED_H`` / LSTM_GPU_POLLED_H=1 still forces every polled path above, to measure them again).
    polled = (one_16 and B > 8) if forced is None else forced
    if polled and one_16:
        transposed, num_warps = True, 4
    if polled and one_bwd and k_tail:
        num_warps = 8
    # The 16-bit backward on 8 warps: since its K chunks are summed spread over the warps (kernels/triton_lstm.py,
    # ``_chunk_sum``), dh and the elementwise work on it divide among them, where 4 warps had chosen when every
    # warp held a copy. Modeled (python -m bench.static, triton 3.6), 4 -> 8 warps: B16 H768 fp16 backward 3.89 ->
    # 3.09 µs/step (606 -> 390 instructions a warp, 255 -> 166 registers), B16 H512 2.63 -> 2.17, B1 H256 1.75 ->
    # 1.63, B64 H1024 bf16 16.16 -> 14.25, B16 H1536 bf16 9.24 -> 9.02; no spills in any (tests/test_triton_sm90.py).
    # (Tried, not kept: W_hh's columns in registers as the forward's fold holds them, the product transposed, dhᵀ =
    # W_gateᵀ · dz_gateᵀ, W the A operand of a batched mma.sync after an identity product. Its LDSM halved (32 -> 16
    # at B16 H512), but the weights took 64 registers a thread (96 at H = 768): 124 -> 254 in all, and ptxas no longer
    # kept the four gates' dz loads in flight together (BAR.SYNC 8 -> 22 a step, the loads in several rounds).
    # Modeled B16 H512 fp16 backward 2.17 -> 2.95 µs/step, B16 H768 3.09 -> 4.77; sm_90, triton 3.6.)
    if backward and use_mma and half:
        num_warps = 8
    # Where it stays in rows ([BB, 4·HT], mma.sync, N spread over the warps) on 16-row tiles: 2 warps, so h is
    # ldmatrix-ed by 2 warps a step instead of 4 (each warp reads all of h). Modeled (python -m bench.static,
    # triton 3.6): B16 H768 fp16 222 -> 177 KB of shared memory per step, 1.98 -> 1.78 µs/step (971 instead of
    # 544 instructions per warp, on half the sub-partitions: 0.54 µs of issue, under the 0.79 of shared
    # memory); B16 H1024 bf16 training forward 2.53 -> 2.26; no spills (254-255 registers). Not with the polled
    # h exchange (a measurement option): at 2 warps it kept 8-33 values in local memory inside the loop.
    if pieces and not transposed and block_b == 16 and not polled and half:
        num_warps = 2
    # K folded into M (``LSTMConfig.fold``), 16-bit forward, 16-row tiles, H ≤ FOLD_MAX_H: the transposed product
    # as [2·4·HT, K/2] · [K/2, 2·BB], row (f, gate, u) of W times column (f', b) of h, fold f of K against fold f';
    # the two blocks with f' = f kept, the two others dropped (half the MMAs' work wasted: the tensor cores are
    # not what bounds a step). That makes M = 128, two warpgroups (8 warps) each multiplying one half of K, and
    # each warpgroup's operand 64 rows x K/2, which fits in registers (H/8 a thread): W_hh stays in registers for
    # the launch and no MMA reads it from shared memory. Modeled (python -m bench.static, triton 3.6): see
    # reports/README.md (B16 H768 fp16 forward 481 -> 249 instructions a warp, 2.01 -> 1.28 µs a step).
    fold = 1
    if (pieces and half and not backward and block_b == 16 and 4 * ht == 64 and H <= FOLD_MAX_H
            and transposed_gates() and folded_gates()):
        (pieces, block_k), fold, transposed, num_warps = fold_pieces(H), 2, True, 8
    return LSTMConfig(ht=ht, block_k=block_k, block_b=block_b, use_dot=use_dot, precision=precision,
                      num_warps=num_warps, num_programs=num_programs * groups, k_split=k_split,
                      batch_groups=groups, group_rows=tiles_per_group * block_b if groups > 1 else 0,
                      polled_h=polled, k_tail=k_tail, pieces=pieces, dz_one_round=dz_one_round,
                      transposed=transposed, fold=fold)


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_config(*, B: int, H: int, dtype: torch.dtype, device: torch.device, backward: bool = False) -> LSTMConfig:
    if device.type != "cuda":
        return interpreter_config(B=B, H=H, dtype=dtype, backward=backward)
    return gpu_config(B=B, H=H, dtype=dtype, n_sm=sm_count(device), backward=backward)


def fits_on_chip(cfg: LSTMConfig, dtype: torch.dtype) -> str | None:
    """Why the W_hh slice of ``cfg`` cannot stay on chip, or None."""
    if cfg.use_dot:
        need = cfg.shared_bytes(dtype)
        if need > DOT_SHARED_BUDGET:
            return (f"the W_hh slice per program ({4 * cfg.ht} rows x {cfg.k_total}) and its operand tile need "
                    f"{need} bytes of shared memory, over the budget of {DOT_SHARED_BUDGET}")
        return None
    words = cfg.w_words(dtype)
    if words > W_REG_BUDGET:
        return (f"the W_hh slice per program ({4 * cfg.ht} rows x {cfg.block_k} = {words} 32-bit registers "
                f"for {dtype}) exceeds the on-chip budget of {W_REG_BUDGET} registers per program")
    return None


def unsupported_reason(*, device: torch.device, dtype: torch.dtype, hidden_size: int, batch: int,
                       n_sm: int | None = None) -> str | None:
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
        n_sm = sm_count(device)
    cfg = gpu_config(B=max(batch, 1), H=hidden_size, dtype=dtype, n_sm=n_sm)
    if cfg.num_programs > n_sm:
        return f"hidden_size {hidden_size} needs {cfg.num_programs} programs, more than the {n_sm} SMs"
    why = fits_on_chip(cfg, dtype)
    if why is not None:
        return f"hidden_size {hidden_size} is too large for the persistent kernel: {why}"
    return None
