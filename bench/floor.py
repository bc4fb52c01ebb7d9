"""The floor: what one time step of a persistent multi-program LSTM costs when it does no math at all.

A persistent LSTM kernel pays, every step, one grid barrier (every program must see all of h_{t-1}
before computing h_t) plus the h exchange (each program writes its own slice of h_t and then reads
all of h_{t-1} back through L2). This file times a Triton kernel that does exactly that and nothing
else, so every measured LSTM can be reported as a multiple of it (``floor_multiple`` in the CSV).

The barrier: the Triton LSTM's own, ``lstm_gpu.kernels.triton_barrier.grid_barrier``, so the floor
measures exactly the barrier the kernel pays. Timed launches wait forever, as the LSTM does; the
correctness check before timing (``check_floor``) gives up after CHECK_TIMEOUT polls instead of hanging.

    _floor_kernel   per step t: read all of h_t (B x H, bypassing L1), reduce it per batch row, write
                    this program's slice of h_{t+1}, grid barrier.
    floor_per_step  launcher + timing: microseconds per step.

Sizing: ``programs_for`` is the grid the Triton LSTM launches for that (batch, hidden, dtype)
(``lstm_gpu.kernels.triton_config.gpu_config``), or without it an estimate (W_hh split so each slice
fits ~200 KB on chip, at most one program per SM); pass ``programs`` to override. The grid is launched with
``launch_cooperative_grid=True`` on a GPU, so an oversized grid is refused by the driver, not hung.

CPU (TRITON_INTERPRET=1): programs run one after another, so a barrier across several would never
complete; the floor then runs with ONE program. Its timings are interpreter timings, meaningless as
GPU numbers, and are labelled so in the CSV.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from lstm_gpu.kernels.triton_barrier import barrier_state, step_barrier

BARRIER = "lstm_gpu.kernels.triton_barrier.grid_barrier"
# on-chip budget for one program's W_hh slice (bytes): ~200 KB of shared memory, a margin under the 227 KB one
# block may use on sm_90 (reports/README.md, "Design facts this report relies on")
ONCHIP_BYTES_PER_PROGRAM = 200 * 1024
# polls of the barrier before the correctness check gives up (~1 s at ~0.25 us per L2 atomic)
CHECK_TIMEOUT = 1 << 22


@triton.jit(do_not_specialize=["T"])
def _floor_kernel(
    p_h,            # [T+1, B, H] h slots: slot 0 is h0, slot t+1 is written at step t
    p_bar,          # [2] int64, zero: the step counter and its time-out flag (triton_barrier.barrier_state)
    T, B, H,        # steps, batch, hidden
    HT,             # hidden units owned by one program
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HT: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_b = tl.arange(0, BLOCK_B)
    o_k = tl.arange(0, BLOCK_K)
    o_own = i_p * HT + tl.arange(0, BLOCK_HT)
    m_b = o_b < B
    m_own = (tl.arange(0, BLOCK_HT) < HT) & (o_own < H)
    for t in tl.range(0, T, num_stages=1):      # num_stages=1: no load of step t+1 hoisted above the barrier
        p_prev = p_h + t * B * H
        # the exchange: all of h_t, written by every program, read back through L2 (.cg skips L1)
        b_acc = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k in range(0, H, BLOCK_K):
            m = m_b[:, None] & ((k + o_k) < H)[None, :]
            b_h = tl.load(p_prev + o_b[:, None] * H + (k + o_k)[None, :], mask=m, other=0.0,
                          cache_modifier=".cg").to(tl.float32)
            b_acc += tl.sum(b_h, 1)
        m2 = m_b[:, None] & m_own[None, :]
        b_own = tl.load(p_prev + o_b[:, None] * H + o_own[None, :], mask=m2, other=0.0,
                        cache_modifier=".cg").to(tl.float32)
        b_new = 0.5 * b_own + (0.5 / H) * b_acc[:, None]        # depends on every element of h_t
        tl.store(p_prev + B * H + o_b[:, None] * H + o_own[None, :], b_new.to(p_h.dtype.element_ty), mask=m2)
        step_barrier(p_bar, t, NUM_PROGRAMS, TIMEOUT)


# The polled exchange's mark, as the LSTM's (kernels/triton_lstm.py): a slot element not yet written holds the bits
# of fp16 -0.0, the least int16; a -0.0 that is written is stored as +0.0.
UNWRITTEN = tl.constexpr(-32768)


@triton.jit(do_not_specialize=["T"])
def _floor_polled_kernel(
    p_h,            # [T+1, B, H] int16, the bits of fp16 h: slot 0 is h0, slots 1 … T filled with UNWRITTEN
    T, B, H, HT,    # steps, batch, hidden, hidden units owned by one program
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HT: tl.constexpr,
):
    """The floor with the LSTM's polled exchange instead of the barrier: no counter, no fence. Each step's h has a
    slot of its own, written once; a program reloads all of h_t until no element is UNWRITTEN (one L2 round trip
    when it is all there), then writes its slice of h_{t+1}. What one step of the polled forward pays at least."""
    i_p = tl.program_id(0)
    o_b = tl.arange(0, BLOCK_B)
    o_k = tl.arange(0, BLOCK_H)
    o_own = i_p * HT + tl.arange(0, BLOCK_HT)
    m_b = o_b < B
    m = m_b[:, None] & (o_k < H)[None, :]
    m2 = m_b[:, None] & ((tl.arange(0, BLOCK_HT) < HT) & (o_own < H))[None, :]
    for t in tl.range(0, T, num_stages=1):
        p_prev = p_h + t * B * H
        w = tl.load(p_prev + o_b[:, None] * H + o_k[None, :], mask=m, other=0, volatile=True)
        while tl.min(w) == UNWRITTEN:                   # all of h_t, polled: the data is the flag
            w = tl.load(p_prev + o_b[:, None] * H + o_k[None, :], mask=m, other=0, volatile=True)
        b_acc = tl.sum(w.to(tl.float16, bitcast=True).to(tl.float32), 1)
        b_own = tl.load(p_prev + o_b[:, None] * H + o_own[None, :], mask=m2, other=0)
        b_new = 0.5 * b_own.to(tl.float16, bitcast=True).to(tl.float32) + (0.5 / H) * b_acc[:, None]
        bits = b_new.to(tl.float16).to(tl.int16, bitcast=True)
        tl.store(p_prev + B * H + o_b[:, None] * H + o_own[None, :], tl.where(bits == UNWRITTEN, 0, bits), mask=m2)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def programs_for(batch: int, hidden: int, dtype: torch.dtype, sm_count: int) -> int:
    """The programs of the persistent Triton LSTM that meet at one step counter for this call (or an
    estimate: W_hh split to fit on chip). With batch groups the LSTM runs several such sets side by side,
    each on its own rows; the floor runs one set over the whole batch (a slightly larger exchange)."""
    if interpreted():
        return 1
    try:
        from lstm_gpu.kernels.triton_config import gpu_config
        cfg = gpu_config(B=batch, H=hidden, dtype=dtype, n_sm=sm_count)
        return min(sm_count, cfg.num_programs // cfg.batch_groups)
    except Exception:   # noqa: BLE001 - no config module: estimate
        pass
    w_bytes = 4 * hidden * hidden * torch.empty(0, dtype=dtype).element_size()
    return max(1, min(sm_count, math.ceil(w_bytes / ONCHIP_BYTES_PER_PROGRAM), hidden))


def launch_params(batch: int, hidden: int, programs: int) -> dict:
    """Tile sizes and warps of the floor kernel for one launch (also used by the sm_90 compile test)."""
    HT = triton.cdiv(hidden, programs)
    BLOCK_B = triton.next_power_of_2(batch)
    BLOCK_K = max(16, min(triton.next_power_of_2(hidden), 4096 // BLOCK_B))
    BLOCK_HT = triton.next_power_of_2(HT)
    # 8 warps once a tile reaches 4096 elements: at 4 warps B=256 needed 253-255 registers on sm_90
    num_warps = 8 if BLOCK_B * max(BLOCK_K, BLOCK_HT) >= 4096 else 4
    return dict(HT=HT, BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K, BLOCK_HT=BLOCK_HT, num_warps=num_warps)


def floor_launch(h: torch.Tensor, bar: torch.Tensor, programs: int, timeout: int = 0) -> None:
    """One launch over all T steps of ``h`` ([T+1, B, H]); ``bar[1]`` becomes 1 if a barrier timed out."""
    T1, B, H = h.shape
    lp = launch_params(B, H, programs)
    extra = {} if interpreted() else {"launch_cooperative_grid": True, "num_warps": lp["num_warps"], "num_stages": 1}
    _floor_kernel[(programs,)](h, bar, T1 - 1, B, H, lp["HT"], BLOCK_B=lp["BLOCK_B"], BLOCK_K=lp["BLOCK_K"],
                               BLOCK_HT=lp["BLOCK_HT"], NUM_PROGRAMS=programs, TIMEOUT=timeout, **extra)


def polled_params(batch: int, hidden: int, programs: int) -> dict:
    """Tiles and warps of the polled floor: all of h in one tile (one poll), 8 warps from 8192 elements."""
    BLOCK_B, BLOCK_H = triton.next_power_of_2(batch), max(16, triton.next_power_of_2(hidden))
    HT = triton.cdiv(hidden, programs)
    return dict(HT=HT, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_HT=triton.next_power_of_2(HT),
                num_warps=8 if BLOCK_B * BLOCK_H >= 8192 else 4)


def polled_launch(h_bits: torch.Tensor, programs: int) -> None:
    """One launch of the polled floor over every slot of ``h_bits`` ([T+1, B, H] int16; ``make_polled_buffers``).
    A launch consumes its slots: refill them (``refill_polled``) before the next."""
    T1, B, H = h_bits.shape
    lp = polled_params(B, H, programs)
    extra = {} if interpreted() else {"launch_cooperative_grid": True, "num_warps": lp["num_warps"], "num_stages": 1}
    _floor_polled_kernel[(programs,)](h_bits, T1 - 1, B, H, lp["HT"], BLOCK_B=lp["BLOCK_B"], BLOCK_H=lp["BLOCK_H"],
                                      BLOCK_HT=lp["BLOCK_HT"], **extra)


def make_polled_buffers(batch: int, hidden: int, steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(h as int16 bits, slot 0 = h0 with -0.0 stored as +0.0, the rest UNWRITTEN; h0 in fp16)."""
    h0 = torch.randn(batch, hidden, device=device).half()
    h0 = torch.where(h0 == 0, torch.zeros_like(h0), h0)
    h = torch.full((steps + 1, batch, hidden), -32768, dtype=torch.int16, device=device)
    h[0] = h0.view(torch.int16)
    return h, h0


def refill_polled(h: torch.Tensor) -> None:
    h[1:].fill_(-32768)


def check_polled(batch: int, hidden: int, device, programs: int, steps: int = 4):
    """Run the polled floor once: (its h slots in fp16, ``floor_reference``'s)."""
    h, h0 = make_polled_buffers(batch, hidden, steps, device)
    polled_launch(h, programs)
    return h.view(torch.float16), floor_reference(h0, steps)


def floor_reference(h0: torch.Tensor, T: int) -> torch.Tensor:
    """What the floor kernel computes, in PyTorch (to check it really exchanged h)."""
    h = h0.float()
    out = [h]
    for _ in range(T):
        h = 0.5 * h + 0.5 * h.mean(1, keepdim=True)
        out.append(h)
    return torch.stack(out).to(h0.dtype)


def make_buffers(batch: int, hidden: int, steps: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.zeros(steps + 1, batch, hidden, dtype=dtype, device=device)
    h[0] = torch.randn(batch, hidden, device=device).to(dtype)
    return h, barrier_state(device)


def check_floor(batch: int, hidden: int, dtype: torch.dtype, device, programs: int, steps: int = 4):
    """Run the floor kernel once on fresh buffers: (its h slots, ``floor_reference``'s, barrier timed out?)."""
    h, bar = make_buffers(batch, hidden, steps, dtype, device)
    floor_launch(h, bar, programs, timeout=CHECK_TIMEOUT)
    return h, floor_reference(h[0], steps), bool(bar[1].item())


def sm90_resource_usage(batch: int, hidden: int, dtype: torch.dtype, sm_count: int = 132) -> dict:
    """Compile the floor kernel as an H100 launch would (no GPU needed) and read REG/STACK/SHARED/LOCAL.

    Needs the interpreter OFF (TRITON_INTERPRET unset when triton was imported): run it in a subprocess,
    ``python -m bench.floor B,H,dtype ...``. Reads the cubin with lstm_gpu.kernels.triton_sm90.resource_usage.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lstm_gpu.kernels.triton_sm90 import resource_usage
    programs = programs_for(batch, hidden, dtype, sm_count)
    lp = launch_params(batch, hidden, programs)
    ptr = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[dtype]
    sig = {"p_h": ptr, "p_bar": "*i64", "T": "i32", "B": "i32", "H": "i32", "HT": "i32",
           **{k: "constexpr" for k in ("BLOCK_B", "BLOCK_K", "BLOCK_HT", "NUM_PROGRAMS", "TIMEOUT")}}
    consts = dict(BLOCK_B=lp["BLOCK_B"], BLOCK_K=lp["BLOCK_K"], BLOCK_HT=lp["BLOCK_HT"], NUM_PROGRAMS=programs,
                  TIMEOUT=0)
    k = triton.compile(ASTSource(_floor_kernel, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": lp["num_warps"], "num_stages": 1})
    usage = resource_usage(k)
    usage.update(programs=programs, num_warps=lp["num_warps"], barrier=BARRIER)
    return usage


def sm90_polled_usage(batch: int, hidden: int, programs: int) -> dict:
    """``sm90_resource_usage`` for the polled floor (fp16 bits), ``programs`` programs."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lstm_gpu.kernels.triton_sm90 import resource_usage
    lp = polled_params(batch, hidden, programs)
    sig = {"p_h": "*i16", "T": "i32", "B": "i32", "H": "i32", "HT": "i32",
           **{k: "constexpr" for k in ("BLOCK_B", "BLOCK_H", "BLOCK_HT")}}
    consts = dict(BLOCK_B=lp["BLOCK_B"], BLOCK_H=lp["BLOCK_H"], BLOCK_HT=lp["BLOCK_HT"])
    k = triton.compile(ASTSource(_floor_polled_kernel, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": lp["num_warps"], "num_stages": 1})
    usage = resource_usage(k)
    usage.update(programs=programs, num_warps=lp["num_warps"], barrier="none (polled)")
    return usage


if __name__ == "__main__":      # python -m bench.floor 1,128,fp32 256,2048,bf16 16,768,fp16,polled ...  -> JSON lines
    import json
    import sys
    for spec in sys.argv[1:]:
        b, h, d, *polled = spec.split(",")
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[d]
        usage = (sm90_polled_usage(int(b), int(h), programs_for(int(b), int(h), dt, 132)) if polled
                 else sm90_resource_usage(int(b), int(h), dt))
        print(json.dumps({"spec": spec, **{k: v for k, v in usage.items() if k != "text"}}))
