"""Compile exactly what the Triton LSTM launchers launch, for sm_90, on any machine (no GPU needed).

Supports: triton 3.6 and 3.9 (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``,
``native_specialize_impl``) and the ``cuobjdump`` shipped in the triton wheel. Tested on: the CPU
development machine (tests/test_triton_sm90.py, bench/static.py). Known risk: this is what ptxas reports
for the cubin, not what the driver grants at launch (see ``co_resident``).

"Exactly what launches": the real launcher (``triton_lstm.lstm_fwd`` / ``lstm_bwd``) is called on meta
tensors with its kernel replaced by a recorder, so the arguments, constexprs, grid and launch options are
the launcher's own. They are then specialised the way Triton's JIT specialises them at a launch
(``native_specialize_impl``: an integer argument equal to 1 becomes a constant, integers divisible by 16
and 16-byte-aligned pointers get ``tt.divisibility = 16``; torch's allocator aligns every tensor to at
least 512 bytes, so every pointer is treated as aligned). Compiled without these hints the code differs:
the tl.dot forward at K = 1024 took 255 registers and a stack frame instead of 126 and none.
The Triton interpreter must be OFF when this runs (TRITON_INTERPRET unset before triton is imported):
the tests run it in a subprocess for that reason.

    python -m lstm_gpu.kernels.triton_sm90     # JSON lines on stdin (a case each), one result line each
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch

from .triton_config import REGS_PER_SM, SHARED_PER_SM, LSTMConfig, gpu_config

MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32
META = torch.device("meta")


@dataclass
class Launch:
    """One recorded kernel launch: the JIT function, its grid, its arguments, its options."""
    fn: object
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)


class _Recorder:
    def __init__(self, fn, sink):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.fn, tuple(grid), args, kwargs))
        return launch


def capture(direction: str, *, B: int, H: int, T: int, dtype: torch.dtype, cfg: LSTMConfig | None = None,
            reverse: bool = False, save: bool = True, n_sm: int = 132) -> Launch:
    """Call the real launcher on meta tensors with the kernel replaced by a recorder; return its launch."""
    from . import triton_lstm as k
    cfg = cfg or gpu_config(B=B, H=H, dtype=dtype, n_sm=n_sm, backward=direction == "bwd")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    e = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device=META)   # noqa: E731
    name = "_lstm_fwd_kernel" if direction == "fwd" else "_lstm_bwd_kernel"
    real, sink = getattr(k, name), []
    setattr(k, name, _Recorder(real, sink))
    try:
        if direction == "fwd":
            k.lstm_fwd(e(T, B, 4 * H), e(B, H), e(B, H), e(4 * H, H), None, reverse, save, config=cfg)
        else:
            k.lstm_bwd(e(T, B, H), e(B, H), e(B, H), e(T, B, 4 * H, dt=acc), e(T, B, H, dt=acc), e(B, H),
                       e(4 * H, H), None, reverse, config=cfg)
    finally:
        setattr(k, name, real)
    (launch,) = sink
    return launch


def compile_launch(launch: Launch):
    """Compile a recorded launch for sm_90 with Triton's run-time specialisation; the CompiledKernel."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import native_specialize_impl
    fn = launch.fn
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    options = {k: v for k, v in launch.kwargs.items() if k not in fn.arg_names}
    values = dict(zip(fn.arg_names, launch.args))
    values.update({k: v for k, v in launch.kwargs.items() if k in fn.arg_names})
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[(i,)] = "constexpr", v
            continue
        ty, attr = native_specialize_impl(BaseBackend, v, False, not p.do_not_specialize, True)
        signature[p.name] = ty
        if ty == "constexpr":                     # an integer equal to 1 becomes a constant
            constexprs[(i,)] = v
        elif attr:
            attrs[(i,)] = backend.parse_attr(attr)
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options=options)


def compile_case(direction: str, **case):
    """``capture`` + ``compile_launch``: the sm_90 kernel the dispatcher would launch for ``case``."""
    return compile_launch(capture(direction, **case))


def _cuobjdump(kernel, flag: str) -> str:
    return _cuobjdump_cubin(kernel.asm["cubin"], flag)


@functools.lru_cache(maxsize=16)
def _cuobjdump_cubin(cubin: bytes, flag: str) -> str:
    # cached: a SASS dump takes about 0.4 s (measured here), and a report reads it twice (loads and stores)
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout


def sass(kernel) -> str:
    """The kernel's SASS as ``cuobjdump -sass`` prints it."""
    return _cuobjdump(kernel, "-sass")


def resource_usage(kernel) -> dict:
    """REG, STACK, SHARED, LOCAL as ``cuobjdump --dump-resource-usage`` reports them for the cubin."""
    text = _cuobjdump(kernel, "--dump-resource-usage")
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    usage["text"] = text.strip()
    return usage


def co_resident(regs: int, shared: int, num_warps: int) -> int:
    """Programs of this kernel one SM can hold at once (registers, shared memory, threads)."""
    threads = 32 * num_warps
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256            # allocation granularity: 256 per warp
    by_regs = REGS_PER_SM // (regs_per_warp * num_warps)
    by_shared = SHARED_PER_SM // shared if shared else MAX_BLOCKS_PER_SM
    return min(by_regs, by_shared, MAX_THREADS_PER_SM // threads, MAX_BLOCKS_PER_SM)


def report(direction: str, **case) -> dict:
    """Resources of the kernel the dispatcher launches for ``case`` (B, H, T, dtype, …)."""
    launch = capture(direction, **case)
    kernel = compile_launch(launch)
    usage = resource_usage(kernel)
    cfg = case.get("cfg") or gpu_config(B=case["B"], H=case["H"], dtype=case["dtype"], n_sm=case.get("n_sm", 132),
                                        backward=direction == "bwd")
    shared = max(usage["SHARED"], kernel.metadata.shared)
    # n_regs / n_spills of a CompiledKernel only exist once it is loaded on a GPU: read the cubin instead
    usage.update(direction=direction, dtype=str(case["dtype"]).replace("torch.", ""), shared_meta=kernel.metadata.shared,
                 config=cfg.__dict__, grid=list(launch.grid),
                 per_sm=co_resident(usage["REG"], shared, cfg.num_warps), loop_local=loop_local_accesses(kernel),
                 loop_local_stores=loop_local_accesses(kernel, ops=("STL",)),
                 global_scratch=getattr(kernel.metadata, "global_scratch_size", 0) or 0)
    return usage


def loop_local_accesses(kernel, ops=("LDL", "STL")) -> int:
    """Local-memory loads and stores (spill traffic; ``ops``) inside the kernel's time loop, read from its
    SASS. A stack frame used only outside the loop (ptxas sometimes keeps one pointer there) costs nothing
    per step; one inside the loop costs a round trip to L1/L2 every step."""
    from bench import sass as reader              # the SASS reader of the static profiler
    code = reader.parse(sass(kernel))
    lo, hi = reader.time_loop(code)
    return sum(1 for ins in code if lo <= ins.addr <= hi and ins.op in ops)


def main(argv=None) -> int:
    """Compile every case given as a JSON line on stdin ({direction, B, H, T, dtype, [config], [precision],
    [reverse], [save], [timeout]: LSTM_GPU_BARRIER_TIMEOUT, the debug mode}); one JSON result line each."""
    from . import triton_config
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        triton_config.FP32_PRECISION = job.get("precision")
        os.environ["LSTM_GPU_BARRIER_TIMEOUT"] = str(job.get("timeout", 0))
        case = dict(B=job["B"], H=job["H"], T=job.get("T", 64), dtype=getattr(torch, job["dtype"]),
                    reverse=job.get("reverse", False))
        if "config" in job:
            case["cfg"] = LSTMConfig(**job["config"])
        if job["direction"] == "fwd":
            case["save"] = job.get("save", True)
        try:
            out = report(job["direction"], **case)
            out.pop("text")
        except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
            out = dict(error=f"{type(e).__name__}: {e}"[:2000])
        out["job"] = job
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the sm_90 compile needs the real Triton compiler")
    raise SystemExit(main())
