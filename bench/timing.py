"""Timing and peak memory: one function for GPU and CPU, same p50/p20/p80 shape of result.

GPU: CUDA events around each call, L2 flushed before each (as triton.testing.do_bench does), gradients
set to None before each call so no accumulation kernel is timed; warm-up first (which also finishes
any Triton autotuning and torch.compile compilation). Unlike do_bench, a minimum number of samples is
always taken, so a 300 ms call still gets a p20/p80 spread instead of one sample.

CPU: ``time.perf_counter`` around each call, same warm-up and repeat logic. CPU numbers say nothing
about GPU performance; every CPU row is labelled so.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class Timing:
    p50: float   # milliseconds
    p20: float
    p80: float
    samples: int

    def per_step(self, steps: int) -> dict:
        """µs per step of a call that ran ``steps`` steps: the CSV columns us_per_step_p50 / p20 / p80."""
        return {f"us_per_step_{q}": round(1000 * getattr(self, q) / steps, 3) for q in ("p50", "p20", "p80")}


@dataclass
class TimingConfig:
    warmup_ms: float = 25.0      # at least this long warming up (and at least min_warmup calls)
    rep_ms: float = 100.0        # aim for this much timed work...
    min_reps: int = 5            # ...but never fewer samples than this
    max_reps: int = 200
    min_warmup: int = 2
    budget_ms: float = 20_000.0  # hard cap on timed work per case (long eager loops at T=4096)


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=10, method="inclusive")   # deciles: q[1] = p20, q[7] = p80
    return statistics.median(samples), q[1], q[7]


def _clear_grads(tensors: Iterable[torch.Tensor]) -> None:
    for t in tensors:
        t.grad = None


def _sample_count(est_ms: float, cfg: TimingConfig) -> int:
    n = int(cfg.rep_ms / max(est_ms, 1e-6))
    n = max(cfg.min_reps, min(cfg.max_reps, n))
    return max(1, min(n, int(cfg.budget_ms / max(est_ms, 1e-6))))


def measure(fn: Callable[[], object], device: torch.device, grad_to_none: Iterable[torch.Tensor] = (),
            cfg: TimingConfig | None = None) -> Timing:
    """Time ``fn()`` on ``device``: p50/p20/p80 in ms over repeated calls after warm-up."""
    cfg = cfg or TimingConfig()
    grads = list(grad_to_none)
    if device.type == "cuda":
        return _measure_cuda(fn, grads, cfg)
    return _measure_cpu(fn, grads, cfg)


def _measure_cpu(fn, grads, cfg: TimingConfig) -> Timing:
    t0 = time.perf_counter()
    n = 0
    while n < cfg.min_warmup or (time.perf_counter() - t0) * 1e3 < cfg.warmup_ms:
        _clear_grads(grads)
        fn()
        n += 1
    est = (time.perf_counter() - t0) * 1e3 / n
    samples = []
    for _ in range(_sample_count(est, cfg)):
        _clear_grads(grads)
        s = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - s) * 1e3)
    return Timing(*quantiles(samples), len(samples))


_L2_FLUSH: dict[int, torch.Tensor] = {}


def _flush_l2() -> None:
    dev = torch.cuda.current_device()
    if dev not in _L2_FLUSH:   # 256 MB, larger than any L2 we meet (H100: 50 MB)
        _L2_FLUSH[dev] = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device="cuda")
    _L2_FLUSH[dev].zero_()


def _measure_cuda(fn, grads, cfg: TimingConfig) -> Timing:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # estimate from the warm-up calls themselves
    n, total = 0, 0.0
    while n < cfg.min_warmup or total < cfg.warmup_ms:
        _clear_grads(grads)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        total += start.elapsed_time(end)
        n += 1
    est = total / n
    reps = _sample_count(est, cfg)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        _clear_grads(grads)
        _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(*quantiles(samples), len(samples))


def peak_memory_mb(fn: Callable[[], object], device: torch.device,
                   grad_to_none: Iterable[torch.Tensor] = ()) -> float | None:
    """Peak allocated memory (MB) during one call of ``fn`` (everything live included: weights, inputs).

    CUDA only (torch.cuda.max_memory_allocated); None on CPU.
    """
    if device.type != "cuda":
        return None
    _clear_grads(grad_to_none)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    flush = sum(t.numel() * t.element_size() for t in _L2_FLUSH.values())   # not the provider's memory
    return (torch.cuda.max_memory_allocated() - flush) / 2**20
