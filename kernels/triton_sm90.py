"""Compile the Triton LSTM kernels for sm_90 on any machine (no GPU needed) and read their resource usage.

Supports: triton 3.9 (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``) and the
``cuobjdump`` shipped in the triton wheel. Tested on: the CPU development machine. Known risk: this is
what ptxas reports for the cubin, not what the driver grants at launch (see ``co_resident``).
The Triton interpreter must be OFF when this runs (TRITON_INTERPRET unset before triton is imported):
tests/test_triton_sm90.py runs it in a subprocess for that reason.

    python -m lstm_gpu.kernels.triton_sm90 H B dtype     # prints one JSON line per kernel
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import torch

from .triton_config import REGS_PER_SM, SHARED_PER_SM, LSTMConfig

_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32


def _signature(direction: str, cfg: LSTMConfig, dtype: torch.dtype, save: bool, reverse: bool):
    import triton.language as tl
    from .triton_lstm import _lstm_bwd_kernel, _lstm_fwd_kernel
    x, acc = _PTR[dtype], ("*fp64" if dtype == torch.float64 else "*fp32")
    tl_acc = tl.float64 if dtype == torch.float64 else tl.float32
    meta = dict(REVERSE=reverse, HT=cfg.ht, BLOCK_K=cfg.block_k, BLOCK_B=cfg.block_b,
                ONE_TILE=True, USE_DOT=cfg.use_dot, PRECISION=cfg.precision, NUM_PROGRAMS=cfg.num_programs,
                ACC=tl_acc, TIMEOUT=0)
    if direction == "fwd":
        fn = _lstm_fwd_kernel
        ptrs = dict(p_gx=x, p_h0=x, p_c0=x, p_w=x, p_len="*i32", p_y=x, p_hn=x, p_cn=x, p_gates=acc,
                    p_cells=acc, p_cs=acc, p_bar="*i32")
        meta["SAVE"] = save
    else:
        fn = _lstm_bwd_kernel
        ptrs = dict(p_dy=x, p_dhn=x, p_dcn=x, p_gates=acc, p_cells=acc, p_c0=x, p_w=x, p_len="*i32",
                    p_dgates=acc, p_dh0=acc, p_dc0=acc, p_dhs=acc, p_dcs=acc, p_bar="*i32")
    return fn, ptrs, meta


def compile_sm90(direction: str, cfg: LSTMConfig, dtype: torch.dtype, *, save: bool = True,
                 reverse: bool = False, one_tile: bool = True):
    """Compile one kernel for sm_90; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn, ptrs, meta = _signature(direction, cfg, dtype, save, reverse)
    meta["ONE_TILE"] = one_tile
    sig = {name: ptrs.get(name, "i32") for name in fn.arg_names if name not in meta}
    sig.update({name: "constexpr" for name in meta})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in ptrs}
    src = ASTSource(fn, sig, constexprs=meta, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=1))


def resource_usage(kernel) -> dict:
    """REG, STACK, SHARED, LOCAL as ``cuobjdump --dump-resource-usage`` reports them for the cubin."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
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


def report(direction: str, cfg: LSTMConfig, dtype: torch.dtype, **kw) -> dict:
    kernel = compile_sm90(direction, cfg, dtype, **kw)
    usage = resource_usage(kernel)
    # n_regs / n_spills of a CompiledKernel only exist once it is loaded on a GPU: read the cubin instead
    usage.update(direction=direction, dtype=str(dtype).replace("torch.", ""), shared_meta=kernel.metadata.shared,
                 config=cfg.__dict__,
                 per_sm=co_resident(usage["REG"], max(usage["SHARED"], kernel.metadata.shared), cfg.num_warps))
    return usage


def main(argv=None) -> int:
    """Compile every (config, direction) given as JSON lines on stdin; one JSON result line each."""
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        cfg = LSTMConfig(**job["config"])
        dtype = getattr(torch, job["dtype"])
        try:
            out = report(job["direction"], cfg, dtype, save=job.get("save", True),
                         reverse=job.get("reverse", False), one_tile=job.get("one_tile", True))
            out.pop("text")
        except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
            out = dict(error=f"{type(e).__name__}: {e}"[:2000], config=job["config"], dtype=job["dtype"],
                       direction=job["direction"])
        out["job"] = job
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the sm_90 compile needs the real Triton compiler")
    raise SystemExit(main())
