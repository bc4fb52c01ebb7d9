"""The static profiler (bench/static.py, bench/sass.py): reading a time loop's SASS, and the model.

The parser is tested on hand-written SASS in the exact format ``cuobjdump -sass`` prints, so a changed
synchronisation (more serial round trips), a longer MMA chain or a batch-tile loop must show in the
numbers; then once end to end: the sm_90 compile of what the dispatcher launches (a subprocess without
TRITON_INTERPRET), whose one-hop step synchronisation must read as one L2 round trip.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

from bench import sass, static


def _sass(lines):
    """cuobjdump-style text: one instruction per 16 bytes."""
    out = ["        Function : _kernel"]
    for i, text in enumerate(lines):
        out.append(f"        /*{i * 16:04x}*/                   {text} ;          /* 0x0000000000000000 */")
    return "\n".join(out)


def _loop(body, sync):
    """prologue, then a time loop: body, the synchronisation, a backward branch to the body's start."""
    code = ["MOV R1, c[0x0][0x28]", "S2R R0, SR_TID.X"] + body + sync
    code.append(f"@P0 BRA {hex(2 * 16)}")
    code.append("EXIT")
    return _sass(code)


EPOCH = ["BAR.SYNC.DEFER_BLOCKING 0x0", "MEMBAR.ALL.GPU", "REDG.E.ADD.64.STRONG.GPU desc[UR8][R48.64], R54",
         "LDG.E.64.STRONG.GPU R52, desc[UR8][R56.64]",                       # poll loop starts here (+3)
         "ISETP.GE.U32.AND P6, PT, R52, R54, PT", "@!P6 BRA {poll}", "BAR.SYNC.DEFER_BLOCKING 0x0"]
SENSE = ["BAR.SYNC.DEFER_BLOCKING 0x0", "MEMBAR.ALL.GPU", "ATOMG.E.ADD.STRONG.GPU PT, R3, desc[UR4][R4.64], R5",
         "ATOMG.E.ADD.STRONG.GPU PT, R7, desc[UR4][R4.64], R6",
         "LDG.E.STRONG.GPU R52, desc[UR8][R56.64]", "ISETP.NE.AND P6, PT, R52, R3, PT", "@!P6 BRA {poll}",
         "BAR.SYNC.DEFER_BLOCKING 0x0"]
MMA4 = ["HMMA.16816.F32 R60, R52, R56, RZ", "HMMA.16816.F32 R60, R72, R58, R60",
        "HMMA.16816.F32 R64, R76, R68, RZ", "HMMA.16816.F32 R60, R80, R70, R60"]


def _with_poll(body, sync, poll_offset):
    start = 2 + len(body) + poll_offset
    return _loop(body, [s.replace("{poll}", hex(start * 16)) for s in sync])


def test_epoch_sync_is_one_round_trip_and_mma_chain():
    step = sass.read_step(sass.parse(_with_poll(MMA4 + ["LDG.E.128 R8, desc[UR8][R20.64]"], EPOCH, 3)))
    assert step.sync_round_trips == 1 and step.fences == 1
    assert step.counts["mma"] == 4 and step.mma_chain == 3           # R60 ← R60 ← R60; R64 independent
    assert step.load_bytes == 16                                     # the LDG.128; the poll is counted apart
    assert step.poll == {"ldg": 1, "other": 2}


def test_sense_reversing_barrier_reads_as_more_round_trips():
    """The previous barrier: an arrival atomic whose result it waits for, the flip, then the poll."""
    step = sass.read_step(sass.parse(_with_poll(MMA4, SENSE, 4)))
    assert step.sync_round_trips == 3
    model = static.model(step, warps=4, programs=48, grid_bytes=0)
    one_hop = static.model(sass.read_step(sass.parse(_with_poll(MMA4, EPOCH, 3))), warps=4, programs=48,
                           grid_bytes=0)
    assert model["sync_us"] > one_hop["sync_us"]


def test_load_rounds_and_prefetch():
    """A load consumed before the synchronisation is a round the step waits for (DRAM unless .cg); one
    issued before it and consumed only in the next trip (a prefetch) is not; a .cg load after it is L2."""
    consumed = ["LDG.E R8, desc[UR8][R20.64]", "FADD R9, R8, R8"]
    exchange = ["LDG.E.STRONG.GPU R30, desc[UR8][R22.64]", "FADD R31, R30, R30"]
    prefetch = ["FADD R9, R8, R8", "LDG.E R8, desc[UR8][R20.64]"]      # used at the top of the next trip
    read = lambda body, after: sass.read_step(sass.parse(                # noqa: E731
        _sass(["MOV R1, RZ", "S2R R0, SR_TID.X"] + body + EPOCH[:3] + ["LDG.E.64.STRONG.GPU R52, desc[UR8][R56.64]",
              "ISETP.GE.U32.AND P6, PT, R52, R54, PT", f"@!P6 BRA {hex((2 + len(body) + 3) * 16)}"] + after
              + ["@P0 BRA 0x20", "EXIT"])))
    assert read(consumed, exchange).load_phases == ["dram", "l2"]
    assert read(prefetch, exchange).load_phases == ["l2"]
    assert read(exchange, []).load_phases == ["l2"]
    # h in two pieces: the second piece's load issued only after the first piece was consumed (staged for
    # the MMAs) is a second serial L2 round; both issued before either is consumed, one round
    serial = exchange + ["LDG.E.STRONG.GPU R32, desc[UR8][R24.64]", "FADD R33, R32, R32"]
    together = exchange[:1] + ["LDG.E.STRONG.GPU R32, desc[UR8][R24.64]", "FADD R31, R30, R30", "FADD R33, R32, R32"]
    assert read([], serial).load_phases == ["l2", "l2"]
    assert read([], together).load_phases == ["l2"]


def test_polled_exchange_polls_the_data():
    """The polled h exchange: no arrival atomic and no fence; the reader loads h with volatile loads
    (STRONG.SYS) and reloads it until no element is still unwritten. The poll is the one L2 round
    trip of the step (not an exchange round besides it); a DRAM load consumed after it is a round."""
    poll = ["LDG.E.128.STRONG.SYS R8, desc[UR8][R20.64]",                  # the first try
            "LOP3.LUT R12, R8, R9, R10, 0x96, !PT", "BAR.SYNC.DEFER_BLOCKING 0x0",
            "ISETP.NE.U32.AND P6, PT, R12, RZ, PT", "@!P6 BRA {done}",
            "LDG.E.128.STRONG.SYS R8, desc[UR8][R20.64]",                  # the poll loop: reload, check
            "LOP3.LUT R12, R8, R9, R10, 0x96, !PT", "BAR.SYNC.DEFER_BLOCKING 0x0",
            "ISETP.NE.U32.AND P6, PT, R12, RZ, PT", "@P6 BRA {poll}"]
    after = MMA4 + ["STG.E desc[UR8][R30.64], R60"]
    start = 2
    code = [s.replace("{poll}", hex((start + 5) * 16)).replace("{done}", hex((start + len(poll)) * 16)) for s in poll]
    step = sass.read_step(sass.parse(_loop(code + after, [])))
    assert step.sync_round_trips == 1 and step.fences == 0
    assert step.load_phases == []
    stalled = sass.read_step(sass.parse(_loop(code + after + ["LDG.E R40, desc[UR8][R42.64]", "FADD R41, R40, R40"],
                                              [])))
    assert stalled.load_phases == ["dram"]
    # h polled piece by piece: the second piece's first try leaves only once the first piece's poll is done,
    # a round trip of its own (one poll loop each); the fused forward polls all pieces in one loop
    second = [s.replace("R20.64", "R22.64") for s in poll]
    at = start + len(poll)
    code2 = code + [s.replace("{poll}", hex((at + 5) * 16)).replace("{done}", hex((at + len(poll)) * 16))
                    for s in second]
    assert sass.read_step(sass.parse(_loop(code2 + after, []))).sync_round_trips == 2


def test_a_poll_loop_that_opens_with_its_check_counts_the_check_every_step():
    """As triton 3.6 compiles the polled h: the first try's loads, then a loop that opens with the check (a
    reduction across the program: BAR.SYNC, shared memory), leaves at a conditional branch when nothing is
    unwritten, else reloads and branches back. The check runs every step: counted; the reloads only while
    waiting: not (the reader had counted neither, so the polled kernels' checks, 3 block reductions a step at
    B16 H768, were invisible to the model)."""
    first = ["LDG.E.128.STRONG.SYS R8, desc[UR8][R20.64]"]
    check = ["VIMNMX.S16x2 R12, R8, R9, PT", "STS [R30], R12", "BAR.SYNC.DEFER_BLOCKING 0x0", "LDS R13, [R31]",
             "ISETP.NE.U32.AND P1, PT, R13, -0x8000, PT", "@P1 BRA {done}"]
    reload = ["LDG.E.128.STRONG.SYS R8, desc[UR8][R20.64]", "BRA {head}"]
    head = 2 + len(first)
    done = head + len(check) + len(reload)
    poll = [s.replace("{done}", hex(done * 16)).replace("{head}", hex(head * 16)) for s in first + check + reload]
    step = sass.read_step(sass.parse(_loop(poll + MMA4 + ["STG.E desc[UR8][R30.64], R60"], [])))
    assert step.counts["bar"] == 1 and step.counts["lds"] == 1 and step.counts["sts"] == 1
    assert step.counts["ldg"] == 1 and step.poll == {"ldg": 1, "other": 1}      # the reload and the branch back
    assert step.sync_round_trips == 1


def test_tile_loop_counts_per_tile():
    body = ["MOV R2, RZ", "HMMA.16816.F32 R60, R52, R56, RZ", "HMMA.16816.F32 R60, R72, R58, R60",
            "@P1 BRA 0x30"]                                           # an inner loop over batch tiles
    one = sass.read_step(sass.parse(_with_poll(body, EPOCH, 3)), inner_trips=1)
    four = sass.read_step(sass.parse(_with_poll(body, EPOCH, 3)), inner_trips=4)
    assert one.inner_loops == 1 and four.tile_trips == 4
    assert four.counts["mma"] == 4 * one.counts["mma"] == 8


def test_model_arithmetic():
    step = sass.Step(counts={"other": 900}, instructions=900, mma_chain=10, fences=1, sync_round_trips=1,
                     load_phases=["l2"])
    p = dict(static.PARAMS, CLOCK_GHZ=1.0, L2=100, DRAM=300, FENCE=50, MMA=30, ISSUE=1.0, L2_BW=1e9, CPI=0)
    m = static.model(step, warps=8, programs=2, grid_bytes=1000, params=p)
    assert m["sync_us"] == pytest.approx((50 + 100) / 1e3)
    assert m["exchange_us"] == pytest.approx((100 + 1000) / 1e3)      # one L2 round + 1000 B at 1 B/cycle
    exposed = static.model(sass.Step(**{**step.__dict__, "load_phases": ["dram", "l2"], "tile_trips": 2}),
                           warps=8, programs=2, grid_bytes=1000, params=p)
    assert exposed["exchange_us"] == pytest.approx((2 * (300 + 100) + 1000) / 1e3)
    assert m["compute_us"] == pytest.approx(1800 / 1e3)               # 900 instr x 2 warps per sub-partition
    mma_bound = static.model(sass.Step(**{**step.__dict__, "counts": {"mma": 300, "other": 600}, "mma_units": 300}), warps=8,
                             programs=2, grid_bytes=1000, params=dict(p, MMA_ISSUE=4))
    assert mma_bound["compute_us"] == pytest.approx(300 * 2 * 4 / 1e3)   # the tensor cores' peak rate bounds it
    smem_bound = static.model(sass.Step(**{**step.__dict__, "smem_wavefronts": 500}), warps=8, programs=2,
                              grid_bytes=1000, params=dict(p, SMEM=1))
    assert smem_bound["compute_us"] == pytest.approx(500 * 8 / 1e3)   # 8 warps share the SM's 128 B/cycle
    assert m["step_us"] == pytest.approx(m["sync_us"] + m["exchange_us"] + m["compute_us"])
    latency_bound = static.model(step, warps=8, programs=2, grid_bytes=1000, params=dict(p, CPI=5))
    assert latency_bound["compute_us"] == pytest.approx(900 * 5 / 1e3)   # a warp's dependent stream bounds it


def test_shared_memory_wavefronts():
    """ldmatrix .x4 moves 512 bytes per warp (4 wavefronts of 128 B), .x2 256, LDS.128 / STS.128 512, a 32-bit
    LDS 128; a 16-bit one still takes a whole wavefront. The reader sums them over the step."""
    ops = ["LDSM.16.M88.4 R4, [R2]", "LDSM.16.MT88.2 R8, [R2+0x200]", "LDS.128 R12, [R3]", "STS.128 [R3], R12",
           "LDS R16, [R3+0x10]", "LDS.U16 R17, [R3+0x20]", "HMMA.16816.F32 R60, R4, R8, RZ"]
    code = sass.parse("\n".join(f"/*{16 * i:04x}*/ {op} ;" for i, op in enumerate(ops)))
    assert [i.smem_wavefronts() for i in code] == [4, 2, 4, 4, 1, 1, 0]
    step = sass.read_step(sass.parse(_with_poll(ops, EPOCH, 3)))
    assert step.smem_wavefronts == 16


def test_warpgroup_mma_reads_its_operands_from_shared_memory():
    """HGMMA.64x16x16 (Hopper's wgmma): both operands by descriptor, 2 KB of A and 512 B of B read from shared
    memory once per warpgroup (a quarter per warp: 5 wavefronts), 16384 FMA (2 HMMA.16816 per warp); with A
    in registers only B is read. Same-accumulator HGMMAs pipeline: no dependent chain."""
    ops = ["HGMMA.64x16x16.F32 R24, gdesc[UR4], RZ, !UPT", "HGMMA.64x16x16.F32 R24, gdesc[UR8], R24",
           "HGMMA.64x16x16.F32 R24, R88, gdesc[UR12], R24", "HGMMA.64x16x8.F32.TF32 R40, gdesc[UR16], RZ, !UPT"]
    code = sass.parse("\n".join(f"/*{16 * i:04x}*/ {op} ;" for i, op in enumerate(ops)))
    assert [i.op for i in code] == ["HGMMA"] * 4 and code[0].operands.startswith("R24")
    assert [i.smem_wavefronts() for i in code] == [5, 5, 1, 5]
    assert [i.mma_units() for i in code] == [2, 2, 2, 2]
    step = sass.read_step(sass.parse(_with_poll(ops, EPOCH, 3)))
    assert step.mma_chain == 0 and step.mma_units == 8 and step.counts["mma"] == 4


def test_step_bytes():
    # forward: every program reads all of h (fp16), plus gates_x, y and the saved fp32 gates and c
    B, H, n = 16, 768, 48
    # (h is written twice: y, and the slot the other programs read, 16-bit on either exchange)
    assert static.step_bytes("fwd", B=B, H=H, dtype=torch.float16, programs=n) == (
        n * B * H * 2 + B * 4 * H * 2 + 2 * B * H * 2 + B * 5 * H * 4)
    low = static.step_bytes("bwd", B=B, H=H, dtype=torch.float16, programs=n, low_exchange=True)
    high = static.step_bytes("bwd", B=B, H=H, dtype=torch.float16, programs=n, low_exchange=False)
    assert low < high


CUOBJDUMP = os.path.join(os.path.dirname(pytest.importorskip("triton").__file__), "backends", "nvidia", "bin",
                         "cuobjdump")


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="cuobjdump (shipped in the triton wheel) is missing")
def test_static_profiler_end_to_end(tmp_path):
    """python -m bench.static on a small case: the CSV row is labelled modeled, the kernel runs on tensor
    cores with a short MMA chain, reads shared memory and does not spill, and the step synchronisation is one L2 round trip."""
    out = tmp_path / "static.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "bench.static", "--case", "16,256,64,float16,fwd+bwd",
                        "--csv", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NOT MEASURED" in r.stdout and "model parameters" in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["direction"] for row in rows] == ["fwd", "bwd"]
    for row in rows:
        assert row["source"] == "modeled from sm_90 code, not measured"
        # the forward's warpgroup MMAs (transposed fused gates) pipeline: no dependent chain; the backward's
        # mma.sync chains stay short
        assert int(row["mma"]) > 0 and (0 if row["direction"] == "fwd" else 1) <= int(row["mma_chain"]) <= 8
        assert int(row["smem_bytes"]) > 0
        assert int(row["loop_spills"]) == 0
        assert int(row["sync_round_trips"]) == 1
        assert float(row["step_us"]) > 0
    # one 16-row tile of 16 rows: the forward polls h (no fence; h's four pieces of K in one poll); the backward
    # counts steps (measured faster on the H200): one fence
    assert int(rows[0]["sync_fences"]) == 0 and int(rows[1]["sync_fences"]) == 1


def test_cli_rejects_a_bad_case():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "bench.static", "--case", "16,256,float16"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "B,H,T,DTYPE,MODE" in r.stderr
