"""``python -m bench.host_overhead``: host (CPU) time of one ``lstm_gpu.LSTM`` call, per backend.

The case is the one where host time shows most: a module call with 2 layers, bidirectional, T = 1, a tiny
batch and hidden size, so the kernels themselves cost next to nothing and what is left is Python: argument
checks, backend selection, lengths conversion, custom-op dispatch, allocations, the launch's own host work.

Without a GPU (``--stub``, the default there) the kernel launches are stubbed out (the Triton kernels'
``[grid](...)`` and the Numba kernels' launch do nothing), so the emulators' time is not counted; reference
and cudnn run for real (at this size their CPU compute is a few µs). These are CPU timings of host code:
they compare versions of the host path with each other, not with a GPU. With a GPU the launches are
real, the clock stops before any synchronize, and the numbers are the host time a GPU call pays.

    python -m bench.host_overhead                       # every backend this machine can run
    python -m bench.host_overhead --backends triton,numba --calls 200 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

VARIANTS = ("no_grad", "train", "packed")
CSV_COLUMNS = ["backend", "variant", "device", "note", "p50_us", "min_us", "drained_us", "latency_us", "syncs"]


class _StubLaunch:
    """Stands in for a jitted kernel: ``kernel[grid](*args)`` and ``kernel[grid, block, stream, shm](*args)``
    do nothing."""

    def __getitem__(self, _config):
        return lambda *args, **kwargs: None


def stub_launches() -> list[str]:
    """Replace the kernel launches of the Triton and Numba backends by no-ops; returns what was stubbed."""
    import torch
    stubbed = []
    try:
        from lstm_gpu.kernels import triton_lstm, triton_stack
        # the one-launch stack's too: a 2-layer bidirectional module on backend="triton" launches it (left
        # running, the interpreter's 240 ms a call were reported as host time)
        for module, names in ((triton_lstm, ("_lstm_fwd_kernel", "_lstm_bwd_kernel")),
                              (triton_stack, ("_stack_fwd_kernel", "_stack_bwd_kernel"))):
            for name in names:
                if hasattr(module, name):
                    setattr(module, name, _StubLaunch())
                    stubbed.append(f"{module.__name__.rsplit('.', 1)[-1]}.{name}")
    except Exception as e:  # noqa: BLE001 - backend not importable here: nothing to stub
        print(f"triton not stubbed: {e}", file=sys.stderr)
    try:
        from lstm_gpu.kernels import numba_lstm
        for dt in (torch.float16, torch.float32, torch.float64):
            numba_lstm._KERNELS[dt] = (_StubLaunch(), _StubLaunch())
        stubbed.append("numba_lstm kernels")
    except Exception as e:  # noqa: BLE001
        print(f"numba not stubbed: {e}", file=sys.stderr)
    return stubbed


def make_case(backend: str, device, *, hidden: int = 16, batch: int = 2, seq_len: int = 1, layers: int = 2):
    """(module, call) for one backend: ``call(variant)`` runs one module call of that variant."""
    import torch
    import lstm_gpu
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    m = lstm_gpu.LSTM(hidden, hidden, num_layers=layers, bidirectional=True, backend=backend).to(device)
    x = torch.randn(seq_len, batch, hidden, device=device)
    xg = x.clone().requires_grad_()
    lengths = torch.full((batch,), seq_len, dtype=torch.int64)       # on the host, as torch asks
    packed = pack_padded_sequence(x, lengths)

    def call(variant: str):
        if variant == "no_grad":
            with torch.no_grad():
                return m(x)
        if variant == "train":
            return m(xg)
        with torch.no_grad():
            return m(packed)
    return m, call


def time_calls(call, variant: str, calls: int, repeats: int, sync=None) -> dict:
    """Per-call host time in µs: p50 and min over ``repeats`` batches of ``calls`` calls each."""
    for _ in range(max(5, calls // 10)):        # warm-up: compilation, caches, the first allocations
        call(variant)
    if sync:
        sync()
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            call(variant)
        per_call.append((time.perf_counter_ns() - t0) / calls / 1e3)
        if sync:                                # outside the clock: the host time is what is measured
            sync()
    return {"p50_us": statistics.median(per_call), "min_us": min(per_call)}


def drained_calls(call, variant: str, calls: int, sync) -> dict:
    """One call at a time, the device idle before each: its host time (``drained_us``, the clock stopped before
    the synchronize) and its latency to the end of its device work (``latency_us``), medians in µs.

    Back to back (``time_calls``) the host can also be held by the device: once the launch queue is full a launch
    waits for room. So: drained ≈ back to back means the host's own work (the cProfile names it); drained far
    below it, with the latency near it, means a call's device work takes that long (the H200's 3.2 ms a triton
    call, 2 layers bidirectional at T = 1, is one or the other)."""
    host, latency = [], []
    for _ in range(calls):
        sync()
        t0 = time.perf_counter_ns()
        call(variant)
        t1 = time.perf_counter_ns()
        sync()
        t2 = time.perf_counter_ns()
        host.append((t1 - t0) / 1e3)
        latency.append((t2 - t0) / 1e3)
    return {"drained_us": statistics.median(host), "latency_us": statistics.median(latency)}


def run(backends: list[str], device: str | None = None, stub: bool | None = None, calls: int = 100,
        repeats: int = 5, variants=VARIANTS, out=print) -> list[dict]:
    """Measure every backend x variant; returns rows (backend, variant, p50_us, min_us, note)."""
    from .env import prepare_cpu_emulation
    prepare_cpu_emulation()
    import torch
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stub = dev.type == "cpu" if stub is None else stub
    note = "launches stubbed" if stub else "launches real"
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)        # host code is single-threaded; ATen's CPU LSTM would add thread noise
        note += ", 1 CPU thread"
    try:
        return _run(backends, dev, stub, note, calls, repeats, variants, out)
    finally:
        torch.set_num_threads(threads)


def _run(backends, dev, stub, note, calls, repeats, variants, out) -> list[dict]:
    import torch
    if stub:
        out(f"stubbed: {', '.join(stub_launches())}")
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rows = []
    for backend in backends:
        try:
            _, call = make_case(backend, dev)
            call("no_grad")
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            out(f"{backend:10s} cannot run on {dev}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        for variant in variants:
            r = time_calls(call, variant, calls, repeats, sync)
            if sync:
                r.update(drained_calls(call, variant, calls, sync))
            r["syncs"] = sync_check(call, variant) if dev.type == "cuda" else ""
            rows.append(dict(backend=backend, variant=variant, device=str(dev), note=note, **r))
            out(f"{backend:10s} {variant:8s} {r['p50_us']:9.1f} µs/call (min {r['min_us']:.1f})  [{dev}, {note}]"
                + (f"  one at a time: host {r['drained_us']:.1f}, latency {r['latency_us']:.1f} µs" if sync else "")
                + (f"  device syncs: {r['syncs']}" if r["syncs"] else ""))
    return rows


def profile_calls(backend: str, device, variant: str = "no_grad", calls: int = 20, top: int = 25) -> str:
    """cProfile of ``calls`` module calls (after a warm-up): the functions with the most cumulative time, as
    text. The H200 measured triton at 3.2 ms of host time a call (2 layers, bidirectional, T = 1), where the
    CPU with its launches stubbed spends 0.13 ms: what the launch path does on a GPU is what this names."""
    import cProfile
    import io
    import pstats
    _, call = make_case(backend, device)
    for _ in range(5):
        call(variant)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call(variant)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return f"cProfile: {backend} {variant}, {calls} calls\n" + buf.getvalue()


def sync_check(call, variant: str) -> str:
    """"none" if one call makes no synchronising torch call (torch.cuda.set_sync_debug_mode("error")), else
    the error torch raised (the cudnn backend is torch's own call and may sync inside cuDNN)."""
    import torch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call(variant)
        return "none"
    except RuntimeError as e:
        return " ".join(str(e).split())[:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="reference,cudnn,triton,numba")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-stub", action="store_true", help="on CPU: run the emulated kernels for real")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV")
    args = p.parse_args(argv)
    rows = run([b for b in args.backends.split(",") if b], args.device, False if args.no_stub else None,
               args.calls, args.repeats)
    if args.csv:
        import csv
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
