"""Every configuration the Triton dispatcher can choose compiles for sm_90 with the weights on chip.

For H in {64 … 2048}, B in {1 … 256}, each dtype (and fp32 under both ieee and tf32): the configs that
``triton_config.unsupported_reason`` accepts for a 132-SM H100 are compiled for sm_90 on this CPU machine
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``) exactly as they launch: the real
launcher's arguments, specialised as Triton's JIT specialises them at run time (kernels/triton_sm90.py;
without the divisibility hints the code read here would never run). ``cuobjdump
--dump-resource-usage`` (shipped in the triton wheel) and the SASS must show no spills inside the time
loop (no LDL/STL there with triton 3.6, the GPU machine's; other versions at most a reload or two of a value
spilled before the loop; a stack frame used only outside it costs nothing per step),
≤ 255 registers, ≤ 227 KB of shared memory, and a grid that fits co-resident on 132 SMs.
The one-launch stack's kernels (kernels/triton_stack.py) likewise, for the modeled cases (``STACK_CASES``).
The compiles run in subprocesses with TRITON_INTERPRET unset (conftest.py sets it for this process).
This says nothing about speed, and the limits are ptxas's, not a run's.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import triton

from lstm_gpu.kernels import triton_config as tc
from lstm_gpu.kernels.triton_sm90 import co_resident

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
pytestmark = pytest.mark.skipif(not (os.path.exists(CUOBJDUMP) or shutil.which("cuobjdump")),
                                reason="cuobjdump (shipped in the triton wheel) is missing")
pytestmark = [pytestmark, pytest.mark.slow]     # a module fixture compiles every config for sm_90 (~45 s; 2 min with 3.6)

HS = [64, 128, 256, 512, 768, 1024, 1280, 1536, 2048]      # 768, 1280, 1536: K in two pieces on the tl.dot path
BS = [1, 2, 4, 8, 16, 64, 256]
FMA_BS = [20]       # fp32-ieee (the FMA tl.dot path): several tiles, the last partly masked
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
N_SM = 132
SHARED_LIMIT = 227 * 1024
# Spills INSIDE the time loop are what must never happen; ptxas sometimes keeps a pointer or two in a
# stack frame used only before or after the loop (8 bytes at 96 registers, fp16 B = 1 H = 256 inference),
# which costs nothing per step (bench.static reports both).
CUDA = torch.device("cuda")
# What runs is what the GPU machine's triton (3.6) compiles: there, no local-memory access at all inside the
# time loop. Other versions (CI also compiles with this machine's 3.9) may reload a value spilled before the
# loop (an L1 hit per step, no store): at H = 1024, one tile, triton 3.9 reloads one row length per step; the
# polled h exchange with h in four fused pieces at H = 1024, B = 1, three values.
STRICT = triton.__version__.startswith("3.6")
INVARIANT_RELOADS = 3
# Other versions compile a subset (CI runs this file with 3.9 and with 3.6, within its 15 minutes): the tiny
# broadcast config, the FMA path's largest H there (512), K in one piece (1024) and in two with the tail read
# after the first piece (1536; read with it: 3.6 compiles 768 and 1280), and the first size refused, at B = 1
# (a constant), 16 (one tile) and 64 (several tiles, batch groups): 155 configs, where 3.6 compiles all 452
# (8 minutes of CI beside the main suite with a cold Triton cache).
if not STRICT:
    HS, BS = [64, 512, 1024, 1536, 2048], [1, 16, 64]


def dispatcher_jobs():
    """One case per distinct kernel the dispatcher launches over the grid (direction, dtype, precision,
    config, one batch tile or several, and the specialisation the sizes get: B = 1 a constant, B and H
    divisible by 16 or not), and the (H, dtype) it refuses."""
    jobs, refused, seen = [], set(), set()
    saved, saved_polled = tc.FP32_PRECISION, tc.POLLED_H
    try:
        for precision in ("ieee", "tf32"):
            tc.FP32_PRECISION = precision
            for dtype in DTYPES:
                if precision == "tf32" and dtype != torch.float32:
                    continue
                fma_dtype = dtype == torch.float32 and precision == "ieee"
                for H in HS:
                    for B in BS + (FMA_BS if fma_dtype else []):
                        if tc.unsupported_reason(device=CUDA, dtype=dtype, hidden_size=H, batch=B,
                                                 n_sm=N_SM):
                            refused.add((H, str(dtype)))
                            continue
                        for direction, save in (("fwd", True), ("fwd", False), ("bwd", True)):
                            cfg = tc.gpu_config(B=B, H=H, dtype=dtype, n_sm=N_SM, backward=direction == "bwd")
                            # B % 16 changed vector widths, not resources, except on the FMA path (fp32-ieee
                            # tl.dot), where rows masked off spilled: compiled both ways there
                            fma = cfg.use_dot and fma_dtype
                            spec = (B == 1, B <= cfg.block_b, fma and B % 16 == 0)
                            key = (direction, save, dtype, precision, cfg, spec)
                            if key not in seen:
                                seen.add(key)
                                jobs.append(dict(direction=direction, save=save, B=B, H=H,
                                                 dtype=str(dtype).replace("torch.", ""), precision=precision))
                        # the other h exchange (the GPU session's "triton-counter" column: a switch the GPU
                        # measurement decides on), headline sizes, one tile: the config of a run with tc.POLLED_H
                        # set to the opposite of what the rule chose
                        rule = tc.gpu_config(B=B, H=H, dtype=dtype, n_sm=N_SM)
                        tc.POLLED_H = not rule.polled_h
                        try:
                            other = tc.gpu_config(B=B, H=H, dtype=dtype, n_sm=N_SM)
                        finally:
                            tc.POLLED_H = saved_polled
                        spec = (B == 1, B <= other.block_b)
                        if (other.polled_exchange(dtype) != rule.polled_exchange(dtype) and H in (256, 768, 1024)
                                and B in (1, 16)):
                            for save in (True, False):
                                if ("fwd", save, dtype, precision, other, spec) not in seen:
                                    seen.add(("fwd", save, dtype, precision, other, spec))
                                    jobs.append(dict(direction="fwd", save=save, B=B, H=H, config=other.__dict__,
                                                     dtype=str(dtype).replace("torch.", ""), precision=precision))
    finally:
        tc.FP32_PRECISION = saved
    # the barrier's debug mode (LSTM_GPU_BARRIER_TIMEOUT: the GPU session's smoke grid runs with it) compiles a
    # poll that counts and gives up: one case per path (tensor cores 16-bit, polled at one tile; several tiles;
    # the FMA path)
    for dtype, H, B in (("float16", 768, 16), ("bfloat16", 1024, 64), ("float32", 256, 1)):
        for direction in ("fwd", "bwd"):
            jobs.append(dict(direction=direction, B=B, H=H, dtype=dtype, precision="ieee", timeout=10_000_000))
    return jobs, refused


def compile_all(jobs, workers=2):
    """Compile the jobs in ``workers`` subprocesses (the machine has 2 cores); one result per job."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    chunks = [jobs[i::workers] for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-m", "lstm_gpu.kernels.triton_sm90"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in chunks]
    results = []
    for p, chunk in zip(procs, chunks):
        p.stdin.write("".join(json.dumps(j) + "\n" for j in chunk))
        p.stdin.close()
    for p in procs:
        out = p.stdout.read()
        err = p.stderr.read()
        assert p.wait() == 0, err[-3000:]
        results += [json.loads(line) for line in out.splitlines() if line.strip()]
    return results


@pytest.fixture(scope="module")
def compiled():
    jobs, refused = dispatcher_jobs()
    return jobs, refused, compile_all(jobs)


def test_dispatcher_supports_what_fits(compiled):
    """The dispatcher refuses only what cannot fit: H > 1536 (any dtype), fp32 from H = 1280 (32-bit weights:
    in registers, H ≤ 1024), fp64 from H = 768. 16-bit H = 1536 fits: K as 1024 + 512, 224 KB of shared memory."""
    jobs, refused, _ = compiled
    expected = {(H, str(d)) for d in DTYPES for H in HS
                if H > 1536 or (d == torch.float32 and H > 1024) or (d == torch.float64 and H >= 768)}
    assert refused == expected


def test_every_config_compiles_for_sm90_without_spills(compiled):
    jobs, _, results = compiled
    assert len(results) == len(jobs)
    problems = []
    for r in results:
        if "error" in r:
            problems.append(f"{r['job']}: {r['error']}")
            continue
        cfg = r["config"]
        name = f"{r['direction']} {r['dtype']} B={r['job']['B']} H={r['job']['H']} {cfg}"
        shared = r["shared_meta"] + r.get("SHARED", 0)
        # the barrier's debug mode is not timed (the GPU session's smoke grid): it must compile, fit and co-reside;
        # its count of polls kept beside the polled h's four pieces spilled 68 accesses per step at B16 H768
        debug = r["job"].get("timeout", 0) > 0
        if r["loop_local"] and not debug and (STRICT or r["loop_local_stores"] or r["loop_local"] > INVARIANT_RELOADS):
            problems.append(f"{name}: {r['loop_local']} local-memory accesses (spills) inside the time loop "
                            f"({r['loop_local_stores']} stores), triton {triton.__version__}")
        if r["LOCAL"]:
            problems.append(f"{name}: LOCAL {r['LOCAL']} bytes of local memory")
        if r["global_scratch"]:     # its launch would fail: the launchers set no triton.set_allocator
            problems.append(f"{name}: needs {r['global_scratch']} bytes of Triton's global scratch memory")
        if r["REG"] > 255:
            problems.append(f"{name}: {r['REG']} registers")
        if shared > SHARED_LIMIT:
            problems.append(f"{name}: {shared} bytes of shared memory")
        per_sm = co_resident(r["REG"], shared, cfg["num_warps"])
        if per_sm * N_SM < cfg["num_programs"]:
            problems.append(f"{name}: {cfg['num_programs']} programs, only {per_sm} per SM x {N_SM} SMs fit")
    assert not problems, "\n".join(problems)


# The one-launch stack (kernels/triton_stack.py): its forward and backward as bench/static_stack.py launches them
# (the stack launcher on meta tensors, Triton's run-time specialisation), the modeled cases and an odd number of
# programs per group (the bidirectional projection without program pairs): no local memory inside any loop but
# the projection's (the bidirectional forward's, polled, reloads PROJECTION_RELOADS loop invariants at most, which
# bench/static_stack.py charges as serial L1 hits; never a store), ≤ 255 registers, ≤ 227 KB of shared memory.
# Swept once beyond these (triton 3.6, training forward): every stack that fits 132 SMs, uni- and bidirectional,
# H 128-512, 2-4 layers, B 1 / 5 / 16, fp16 and bf16: all clean but bidirectional H = 512 (2 reloads, B ≥ 5). The CPU tests run it under the interpreter, which accepts code the
# compiler refuses (a jit function returning tuples of different layouts from two branches did).
PROJECTION_RELOADS = 2
STACK_CASES = [(16, 512, 2, 1, "float16", "fwd"), (16, 512, 2, 2, "float16", "fwd"), (16, 512, 2, 2, "float16", "bwd"),
               (8, 200, 2, 2, "bfloat16", "fwd"), (8, 200, 2, 2, "bfloat16", "bwd"),
               (16, 272, 2, 1, "float16", "bwd"), (5, 512, 3, 1, "float16", "bwd"), (16, 512, 1, 2, "float16", "bwd"),
               (16, 64, 1, 2, "float16", "fwd")]
# (bench.static_stack compiles the unidirectional backward at H512; H = 200 has an odd number of programs per group:
# the forward projects whole rows, the backward one program more per group, in pairs;
# H = 272 masked units, 3 layers at H = 512 no room for projection groups: each layer computes its dy in its loop;
# one bidirectional layer at H = 512: the backward's whole dz row staged, the widest one layer that fits; one at
# H = 64: the compiler's scratch for the exchanges between 8 warps beyond the tiles)
_STACK_SCRIPT = """
import json, sys, torch
from bench import sass, static_stack
from lstm_gpu.kernels import triton_sm90
from lstm_gpu.kernels.triton_stack_config import dot_shared_bytes
for B, H, L, D, dtype, direction in json.loads(sys.argv[1]):
    cfg, launch = static_stack.capture(direction, B=B, H=H, T=64, L=L, D=D, dtype=getattr(torch, dtype), save=True)
    k = triton_sm90.compile_launch(launch)
    code = sass.parse(triton_sm90.sass(k))
    main, projection = static_stack.outer_loops(code)
    inside = lambda loop, ops: 0 if loop is None else sum(1 for i in code if loop[0] <= i.addr <= loop[1] and i.op in ops)
    others = [ab for ab in sass.loops(code) if not any(o and o[0] <= ab[0] and ab[1] <= o[1] for o in (main, projection))]
    local = inside(main, ("LDL", "STL")) + inside(projection, ("STL",)) + sum(inside(ab, ("LDL", "STL")) for ab in others)
    u = triton_sm90.resource_usage(k)
    run = cfg if direction == "fwd" else cfg.backward()
    bound = dot_shared_bytes(run, L=L, D=D, dtype=getattr(torch, dtype), backward=direction == "bwd")
    print(json.dumps(dict(case=[B, H, L, D, dtype, direction], REG=u["REG"], LOCAL=u["LOCAL"], loop_local=local,
                          reloads=inside(projection, ("LDL",)),
                          shared=k.metadata.shared + u["SHARED"], bound=bound + u["SHARED"])))
"""


@pytest.mark.skipif(not STRICT, reason="the GPU machine's triton (3.6) is what compiles it: .ci/run runs this file "
                                       "with 3.6 too (with 3.9 the bidirectional projection without program pairs, "
                                       "H = 272, spilled 146 accesses per step)")
def test_stack_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", _STACK_SCRIPT, json.dumps(STACK_CASES)], cwd=root,
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["case"] for x in results] == [list(c) for c in STACK_CASES]
    problems = [f"{x['case']}: {x}" for x in results
                if x["loop_local"] or x["reloads"] > PROJECTION_RELOADS or x["LOCAL"] or x["REG"] > 255
                or x["shared"] > min(SHARED_LIMIT, x["bound"])]     # the dispatcher's bound holds
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not STRICT, reason="the GPU machine's triton (3.6) is what compiles it")
def test_stack_kernels_compile_with_the_debug_time_out():
    """The GPU smoke grid runs with LSTM_GPU_BARRIER_TIMEOUT set: the first GPU run found the stack's time-out
    code refused by the sm_90 compile (an int64 flag mixed with an int32 literal), which no compile here had tried."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["LSTM_GPU_BARRIER_TIMEOUT"] = "1000"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cases = [(16, 256, 1, 2, "float16", "fwd"), (16, 256, 1, 2, "float16", "bwd")]
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", _STACK_SCRIPT, json.dumps(cases)], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == len(cases)


_FOLD_SCRIPT = """
import json, sys
import torch
from bench import sass
from lstm_gpu.kernels import triton_config as tc, triton_sm90
out = []
for folded in (True, False):
    tc.FOLDED_GATES = folded
    for dtype in (torch.float16, torch.bfloat16):
        k = triton_sm90.compile_case("fwd", B=16, H=768, T=1024, dtype=dtype, save=False)
        code = sass.parse(triton_sm90.sass(k))
        lo, hi = sass.time_loop(code)
        mma = [i for i in code if lo <= i.addr <= hi and i.op == "HGMMA"]
        out.append(dict(folded=folded, dtype=str(dtype), fold=tc.gpu_config(B=16, H=768, dtype=dtype).fold,
                        hgmma=len(mma), a_smem=sum(1 for i in mma if i._wgmma()[4])))
print(json.dumps(out))
"""


def test_folded_forward_reads_the_weights_from_registers():
    """K folded into M (kernels/triton_lstm.py, ``_in_registers``) holds W_hh in registers only because Triton
    lets a warpgroup MMA read an A operand that an earlier MMA produced from registers: if a Triton release stopped
    doing so, the folded kernel would still be correct and compile, but read W from shared memory again (and do
    twice the tensor-core work for it). So: in the sm_90 SASS of the B16 H768 forward (fp16, bf16), no HGMMA of the
    time loop takes A by descriptor when folded, every one does unfolded."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", _FOLD_SCRIPT], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for x in json.loads(r.stdout.splitlines()[-1]):
        assert x["hgmma"] > 0, x
        if x["folded"]:
            assert x["fold"] == 2 and x["a_smem"] == 0, x
        else:
            assert x["fold"] == 1 and x["a_smem"] == x["hgmma"], x
