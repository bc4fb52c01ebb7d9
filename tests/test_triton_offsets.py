"""64-bit offsets: T·B·4H can pass 2³¹ elements, so every offset that moves along time must be int64.

Checked on CPU from the Triton IR of the sm_90 compile (the interpreter cannot stage 2³¹ elements): each
pointer into a [T, B, ·] tensor first gets an i64 row offset, (t·B + b)·width, then a small i32 column
offset. Removing a ``.to(tl.int64)`` from a kernel makes this test fail. The real check, on tensors past
2³¹ elements, is tests/test_reliability_gpu.py::test_offsets_past_2_pow_31.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow      # compiles four Triton kernels for sm_90 in a subprocess

_SCRIPT = r"""
import json, re, torch
from lstm_gpu.kernels.triton_sm90 import compile_case
out = {}
for direction in ("fwd", "bwd"):
    for dtype in (torch.float32, torch.float16):   # B = 64: several batch tiles, as the launcher runs them
        ttir = compile_case(direction, B=64, H=256, T=64, dtype=dtype).asm["ttir"]
        offsets = re.findall(r"tt\.addptr [^:]+: .*?, tensor<[0-9x]+x(i32|i64)>", ttir)
        out[f"{direction} {dtype}"] = [offsets.count("i64"), len(offsets)]
print(json.dumps(out))
"""


def test_time_offsets_are_64_bit():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    # forward: gates_x, y (read h_{t-1}, write h_t), gates, cells; backward: dy, gates, cells (t and t-1), dgates
    for name, (n_i64, n_all) in counts.items():
        assert n_all > 0, f"{name}: no pointer arithmetic found in the Triton IR (did its format change?)"
        assert n_i64 >= 4, f"{name}: only {n_i64} of {n_all} pointer offsets in the Triton IR are 64-bit"
