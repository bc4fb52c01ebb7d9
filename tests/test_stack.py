"""The one-launch LSTM stack (kernels/triton_stack.py, lstm_gpu/stack.py): all layers and both directions of an
``lstm_gpu.LSTM`` in one kernel launch per pass, against torch.nn.LSTM.

Checked: outputs and EVERY gradient (input, h0, c0, each weight and bias) for 1-4 layers, uni- and bidirectional,
packed with unsorted lengths, h0/c0, batch_first, fp64/fp32/fp16, through the interpreter (one program per
(layer, direction), run one after another) and through ``lstm_gpu.testing.concurrent_programs`` (several programs
per group, all at once: the waits between groups really wait); autocast (float16 kernels, float32 gradients);
dropout (rate, 1/(1-p) scaling, eval, gradients against a reference applying the same mask, torch.compile with
fullgraph in training); one launch per pass; mutated waits are caught; the configuration (a pure function) and the
reasons a stack does not fit. Outputs start NaN-filled (conftest.py).
"""
import contextlib
import time
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import lstm_gpu
from lstm_gpu import stack as stack_op
from lstm_gpu import testing
from lstm_gpu.kernels import triton_stack_config as config
from lstm_gpu.testing import ProgramsHung, concurrent_programs
from helpers import assert_close, twin_lstms

TRITON_SKIP = testing.unavailable_reason("triton")
needs_triton = pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
if TRITON_SKIP is None:
    from lstm_gpu.kernels import triton_stack

# (outputs, gradients) tolerance vs torch.nn.LSTM computed in float64, by dtype
TOL = {torch.float64: (1e-12, 1e-11), torch.float32: (2e-6, 1e-5), torch.float16: (4e-3, 2e-2)}


# ----------------------------------------------------------------------------------------------------
# Helpers: our module and torch's with the same weights, every output and gradient compared
# ----------------------------------------------------------------------------------------------------

def lengths_for(T, B):
    """Unsorted lengths from T down to 1, the longest not first (T=5, B=3: [3, 5, 1])."""
    lens = [max(1, T - (2 * i + 2) % (T + 1)) for i in range(B)]
    lens[min(1, B - 1)] = T
    return torch.tensor(lens)


def run_model(model, x, h0, c0, lengths, batch_first, context=contextlib.nullcontext, autocast=None):
    """Forward and backward of ``model`` (its own parameter copies); returns outputs and gradients. ``context()``
    wraps both; ``autocast`` (a dtype) runs the forward only under CPU autocast, as torch recommends."""
    T = x.shape[1 if batch_first else 0]
    xi, h0i, c0i = (t.clone().requires_grad_() for t in (x, h0, c0))
    with context():
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            if lengths is not None:
                packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=batch_first,
                                                                 enforce_sorted=False)
                out, (hn, cn) = model(packed, (h0i, c0i))
                y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
            else:
                y, (hn, cn) = model(xi, (h0i, c0i))
        (y.square().sum() + hn.sum() + 0.5 * cn.square().sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return dict(y=y, h_n=hn, c_n=cn, dx=xi.grad, dh0=h0i.grad, dc0=c0i.grad, **grads)


def stack_vs_torch(*, L, bidirectional, dtype, T=4, B=3, I=3, H=5, lengths=None, batch_first=False, bias=True,
                   context=contextlib.nullcontext):
    """lstm_gpu.LSTM(backend="triton", stack=True) vs torch.nn.LSTM in float64 with the same weights: every output
    and gradient."""
    torch.manual_seed(0)
    kw = dict(num_layers=L, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    ref = torch.nn.LSTM(I, H, dtype=torch.float64, **kw)
    ours = lstm_gpu.LSTM(I, H, dtype=dtype, backend="triton", stack=True, **kw)
    ours.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    h0, c0 = torch.randn(L * D, B, H), torch.randn(L * D, B, H)
    want = run_model(ref, x.double(), h0.double(), c0.double(), lengths, batch_first)
    got = run_model(ours, x.to(dtype), h0.to(dtype), c0.to(dtype), lengths, batch_first, context)
    tol, gtol = TOL[dtype]
    for name in want:
        assert not torch.isnan(got[name]).any(), f"{name}: NaN (an element never written, or read before written)"
        assert_close(got[name], want[name], tol if name in ("y", "h_n", "c_n") else gtol, what=name)


# ----------------------------------------------------------------------------------------------------
# The interpreter: one program per (layer, direction), one after another
# ----------------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("L,bidirectional,dtype,packed,batch_first", [
    (1, False, torch.float64, False, False),
    (2, False, torch.float64, True, False),
    (2, True, torch.float64, True, True),
    (3, True, torch.float32, True, False),
    (2, False, torch.float16, False, True),
    (2, True, torch.float16, True, False),
    pytest.param(4, False, torch.float64, True, True, marks=pytest.mark.slow),
    pytest.param(4, True, torch.float32, False, False, marks=pytest.mark.slow),
    pytest.param(1, True, torch.float64, True, False, marks=pytest.mark.slow),
    pytest.param(3, False, torch.float16, True, False, marks=pytest.mark.slow),
], ids=str)
def test_stack_vs_torch_lstm(L, bidirectional, dtype, packed, batch_first):
    stack_vs_torch(L=L, bidirectional=bidirectional, dtype=dtype, T=5, lengths=lengths_for(5, 3) if packed else None,
                   batch_first=batch_first)


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_16_bit_gates_x_read_as_words(bidirectional):
    """fp16 with an even H: every gates_x row is read as 32-bit words, two units each, and unpacked after the
    wait (kernels/triton_stack.py, ``_load_gx``); the odd H of the other fp16 tests read it unit by unit."""
    stack_vs_torch(L=2, bidirectional=bidirectional, dtype=torch.float16, T=5, H=6, lengths=lengths_for(5, 3))
    stack_vs_torch(L=2, bidirectional=bidirectional, dtype=torch.float16, T=3, H=18,
                   context=lambda: concurrent_programs(6 if not bidirectional else 8, backends=("triton",)))


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_products_as_rows(bidirectional, monkeypatch):
    """The fused products of the recurrence and the projections as [BB, 4·HT] rows (the transposed form, the
    default where K ≤ 512, is what the other fp16 tests run): every output and gradient vs nn.LSTM."""
    from lstm_gpu.kernels import triton_config
    monkeypatch.setattr(triton_config, "TRANSPOSED_GATES", False)
    stack_vs_torch(L=2, bidirectional=bidirectional, dtype=torch.float16, T=5, H=6, lengths=lengths_for(5, 3))


@needs_triton
@pytest.mark.parametrize("L,bidirectional", [(2, False), (3, False), (2, True)], ids=str)
def test_folded_recurrence_vs_torch_lstm(L, bidirectional):
    """The recurrence's product with K folded into M and W_hh in registers (kernels/triton_lstm.py's fold, the GPU's
    16-bit stacks; BLOCK_H ≥ 32, so H = 20 here; the other fp16 tests, H = 5-6, run it unfolded): every output and
    gradient vs nn.LSTM, packed. Read with both folds starting at the first half of K, it fails."""
    cfg = config.interpreter_config(B=3, H=20, L=L, D=2 if bidirectional else 1, dtype=torch.float16)
    assert config.recurrence_fold(cfg, torch.float16) == 2
    stack_vs_torch(L=L, bidirectional=bidirectional, dtype=torch.float16, T=5, H=20, lengths=lengths_for(5, 3))


@needs_triton
def test_stack_without_bias_vs_torch_lstm():
    stack_vs_torch(L=3, bidirectional=True, dtype=torch.float64, lengths=lengths_for(4, 3), bias=False)


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_autocast_runs_the_stack_in_the_autocast_dtype(bidirectional):
    """A float32 model under autocast runs the stack as torch's LSTM runs under CUDA autocast: the kernels get
    x, h0, c0 and every weight in float16, the outputs are float16, the gradients reach x, h0, c0 and the
    parameters in float32. float16: the interpreter's bf16 is broken. Against float64 our error is at most 2x (3x
    for gradients) that of nn.LSTM run in float16, plus a floor: nn.LSTM itself cannot be the reference under CPU
    autocast (oneDNN refuses float16; with oneDNN off it stays float32)."""
    L, D, T, B, I, H = 2, 2 if bidirectional else 1, 5, 3, 3, 5
    torch.manual_seed(0)
    exact = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float64)
    half = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float16)
    ours = lstm_gpu.LSTM(I, H, num_layers=L, bidirectional=bidirectional, backend="triton", stack=True)
    for m in (half, ours):
        m.load_state_dict(exact.state_dict())
    x, h0, c0 = torch.randn(T, B, I), torch.randn(L * D, B, H), torch.randn(L * D, B, H)
    want = run_model(exact, x.double(), h0.double(), c0.double(), None, False)
    theirs = run_model(half, x.half(), h0.half(), c0.half(), None, False)
    with mock.patch.object(triton_stack, "stack_fwd", wraps=triton_stack.stack_fwd) as launcher:
        got = run_model(ours, x, h0, c0, None, False, autocast=torch.float16)
    (args, _), = launcher.call_args_list
    assert {a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()} == {torch.float16}
    for name in want:               # measured: ours 1.3e-4 … 2.2e-3, nn.LSTM in float16 2.2e-4 … 5.1e-3
        out = name in ("y", "h_n", "c_n")
        assert got[name].dtype == (torch.float16 if out else torch.float32), (name, got[name].dtype)
        err, half_err = ((r[name].double() - want[name]).abs().max().item() for r in (got, theirs))
        assert err <= (2 if out else 3) * half_err + 1e-4, f"{name}: error {err:.2e}, nn.LSTM fp16's {half_err:.2e}"


# ----------------------------------------------------------------------------------------------------
# Every program at once: several programs per (layer, direction), the waits between groups really wait
# ----------------------------------------------------------------------------------------------------

def stack_h(n, *, L, D, dtype, B=3, start=2):
    """The smallest H ≥ start whose stack config under concurrent_programs(n) is n programs, ≥ 2 per group, the
    last slice of each group partly masked (H not a multiple of HT)."""
    for H in range(start, 257):
        cfg = config.gpu_config(B=B, H=H, L=L, D=D, dtype=dtype, n_sm=n)
        if cfg.num_programs == n and cfg.programs_per_group >= 2 and H % cfg.ht:
            return H
    raise AssertionError(f"no H gives {n} stack programs for {L} layer(s) x {D} direction(s), {dtype}")


# (n, L, bidirectional, dtype, packed, batch_first); broadcast path HT = 4, tl.dot (fp16) HT = 16
MANY = [
    (4, 2, False, torch.float64, True, False),      # 2 groups x 2 programs, H = 5 (no room for a projection group)
    (6, 2, False, torch.float64, True, False),      # 2 layers + layer 1's projection group, 2 programs each
    (6, 2, False, torch.float16, False, True),      # the same on tl.dot, H = 17
    (8, 2, True, torch.float64, True, True),        # 4 groups x 2 programs
    (4, 2, False, torch.float16, False, False),     # tl.dot, H = 17
    pytest.param(6, 3, False, torch.float32, True, False, marks=pytest.mark.slow),
    pytest.param(10, 3, False, torch.float64, True, False, marks=pytest.mark.slow),   # 2 projection groups
    pytest.param(12, 3, True, torch.float64, True, False, marks=pytest.mark.slow),
    pytest.param(12, 2, True, torch.float64, False, False, marks=pytest.mark.slow),   # 3 programs per group
    pytest.param(8, 2, True, torch.float16, True, False, marks=pytest.mark.slow),
]


@needs_triton
@pytest.mark.parametrize("n,L,bidirectional,dtype,packed,batch_first", MANY, ids=str)
def test_stack_many_programs_vs_torch_lstm(n, L, bidirectional, dtype, packed, batch_first):
    D = 2 if bidirectional else 1
    H = stack_h(n, L=L, D=D, dtype=dtype, start=9 if n == 12 else 2)
    stack_vs_torch(L=L, bidirectional=bidirectional, dtype=dtype, T=4, H=H, lengths=lengths_for(4, 3) if packed else None,
                   batch_first=batch_first, context=lambda: concurrent_programs(n, backends=("triton",)))


# ----------------------------------------------------------------------------------------------------
# Mutations: a wait that does not wait, or waits for the wrong step of the layer below, must be caught
# ----------------------------------------------------------------------------------------------------

MUTATION_DEADLINE = 6.0


@pytest.fixture
def counters(monkeypatch):
    """Forward and backward through the epoch counters (``triton_stack.POLLED_FORWARD`` and ``POLLED_BACKWARD``
    off; both poll by default): the tests of their waits."""
    if TRITON_SKIP is None:
        monkeypatch.setattr(triton_stack, "POLLED_FORWARD", False)
        monkeypatch.setattr(triton_stack, "POLLED_BACKWARD", False)


def _mutation_verdict(run, attempts=2):
    """Run a mutated many-program case (``run``) up to ``attempts`` times: the name of the first failure it
    causes (AssertionError: a wrong or NaN output; ProgramsHung: the harness's hang report), or "right". A
    mutated wait is a race, caught when a reader gets in before a writer, which threads on 2 cores do not
    always arrange (one run in about 40 of these tests slipped through once): two tries make a miss about
    1 in 1600, and hide no real bug (the unmutated kernels face the deterministic tests)."""
    start = time.monotonic()
    verdict = "right"
    for _ in range(attempts):
        try:
            run()
        except (AssertionError, ProgramsHung) as e:
            verdict = type(e).__name__
            break
    assert time.monotonic() - start < attempts * (4 * MUTATION_DEADLINE + 20)
    return verdict


def _mutant_verdict(n, *patches, L, bidirectional, H, T=12):
    """``_mutation_verdict`` of a 2-core many-program run (n programs, float64) against nn.LSTM under the
    patches (mocks of the kernel's waits or polls)."""
    def run():
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            stack_vs_torch(L=L, bidirectional=bidirectional, dtype=torch.float64, T=T, H=H,
                           context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    return _mutation_verdict(run)


def _no_wait(*args, **kwargs):
    return None


def _one_step_early(real):
    """The real wait, asking one program-step less of every counter than it should: a program reads a step
    before the last program of that step has written it."""
    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        return real(p_bar, g_a, n_a - 1, g_b, n_b - 1, g_c, n_c - 1, TIMEOUT)
    return wait


@needs_triton
@pytest.mark.parametrize("kind", ["no_wait", "one_early"])
@pytest.mark.parametrize("n", [4, 6], ids=["in-loop-projection", "projection-group"])
def test_broken_waits_are_caught(kind, n, counters):
    L, D = 2, 1
    H = stack_h(n, L=L, D=D, dtype=torch.float64)
    mutation = _no_wait if kind == "no_wait" else _one_step_early(triton_stack._wait)

    def run():
        with mock.patch.object(triton_stack, "_wait", mutation):
            stack_vs_torch(L=L, bidirectional=False, dtype=torch.float64, T=4, H=H,
                           context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    assert _mutation_verdict(run) != "right", f"the mutated wait ({kind}) went unnoticed"


def _projection_one_step_early(real, npg):
    """The real wait, except that a projection asks one step of the group it reads (npg program-steps) too
    little. Its waits are the ones with a target for another group and none for its own (a bidirectional layer
    projecting its input or dy), or, a unidirectional projection group (its counter after the layers'), a target
    for a group before its own. One program-step early was caught 2 times in 3 (T = 12): the programs of layer 0
    finish a step close together, so the reader rarely gets in between."""
    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        early = ((n_a == 0) | (g_b < g_a)) & (n_b > 0)
        return real(p_bar, g_a, n_a, g_b, tl.where(early, n_b - npg, n_b), g_c, tl.where(early, n_c - npg, n_c),
                    TIMEOUT)
    return wait


def _projection_not_awaited(real, npg):
    """The real wait, except that a bidirectional layer ≥ 1 does not wait for its group's projection to be
    complete before its recurrence (the wait whose three counters are its own)."""
    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        done = (g_a == g_b) & (g_b == g_c) & (n_b == 0)
        return real(p_bar, g_a, tl.where(done, 0, n_a), g_b, n_b, g_c, n_c, TIMEOUT)
    return wait


@needs_triton
@pytest.mark.parametrize("n,mutation", [(8, _projection_one_step_early), (12, _projection_one_step_early),
                                        (8, _projection_not_awaited)],
                         ids=["pairs-split-rows-early", "whole-rows-early", "pairs-not-awaited"])
def test_bidirectional_projection_waits_for_what_it_reads(n, mutation, counters):
    """A bidirectional layer ≥ 1 projecting an input row before the layer below has written it, or reading its
    gates_x before its group's projection is complete, in a many-program run, gives wrong outputs or a hang
    report, never a pass (each caught in every run while written: 6 of 6 and 3 of 3). n = 8: two programs per
    group, so program pairs split the rows in halves; n = 12: three, whole rows."""
    L, D = 2, 2
    H = stack_h(n, L=L, D=D, dtype=torch.float64, start=9 if n == 12 else 2)
    npg = n // (L * D)

    def run():
        with mock.patch.object(triton_stack, "_wait", mutation(triton_stack._wait, npg)):
            stack_vs_torch(L=L, bidirectional=True, dtype=torch.float64, T=12, H=H,
                           context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    assert _mutation_verdict(run) != "right", f"the mutated projection wait ({mutation.__name__}) went unnoticed"


def _projection_group_one_step_early(real, npg):
    """The real wait, except that a unidirectional layer ≥ 1 asks its projection group (a counter after its own)
    for one step (npg program-steps) less: it prefetches gates_x[t + 1] before it is written."""
    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        early = (g_b > g_a) & (n_b > 0)
        return real(p_bar, g_a, n_a, g_b, tl.where(early, n_b - npg, n_b), g_c, n_c, TIMEOUT)
    return wait


@needs_triton
def test_layer_waits_for_its_projection_group(counters):
    """A unidirectional layer ≥ 1 reading gates_x one step before its projection group wrote it, in a
    many-program run (two programs per group), gives wrong outputs or a hang report, never a pass. The
    projection is slowed down (50 ms a call), so that the layer catches up with it: left to run free it stays
    ahead, and the mutation went unnoticed in 2 of 4 runs."""
    n, L = 6, 2
    H = stack_h(n, L=L, D=1, dtype=torch.float64)
    assert config.gpu_config(B=3, H=H, L=L, D=1, dtype=torch.float64, n_sm=n).proj_groups == 1
    real_project = triton_stack._project

    def slow_project(*args):
        time.sleep(0.05)
        return real_project(*args)

    verdict = _mutant_verdict(n, mock.patch.object(triton_stack, "_wait",
                                                   _projection_group_one_step_early(triton_stack._wait, 2)),
                              mock.patch.object(triton_stack, "_project", slow_project), L=L, bidirectional=False, H=H)
    assert verdict != "right", "the layer's early wait for its projection group went unnoticed"


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_waits_ask_only_for_what_a_step_reads(bidirectional, counters):
    """The forward's waits, recorded (one program per group), as (group waited on first, count, …): every step
    waits for its own group's previous step; layer 0 for no other group. Unidirectional (programs: layer 0,
    layer 1's projection group, layer 1): the projection waits for layer 0 done with t and its own group done
    with t - 1; layer 1, before its loop, for the projection of t = 0 and at step t for the projection of t + 1
    (its prefetch), never for layer 0.
    Bidirectional: layer 1 first projects its input, time t once both directions of layer 0 have it (after
    k = T//2 + 1 … T of their steps: t = k-1 and T-k; one program per group, so no program pairs splitting the
    row), arrives once, then runs its steps waiting for its own group only."""
    from triton.runtime import interpreter
    T, D = 4, 2 if bidirectional else 1
    calls, real = [], triton_stack._wait

    def value(x):
        return int(x.handle.data.reshape(-1)[0]) if hasattr(x, "handle") else int(x)

    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        calls.append((interpreter.interpreter_builder.grid_idx[0], *(value(v) for v in (g_a, n_a, g_b, n_b, g_c, n_c))))
        return real(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT)

    model = lstm_gpu.LSTM(3, 5, num_layers=2, bidirectional=bidirectional, dtype=torch.float64, backend="triton")
    with mock.patch.object(triton_stack, "_wait", wait), torch.no_grad():
        model(torch.randn(T, 2, 3, dtype=torch.float64))
    by_program = {pid: [c[1:] for c in calls if c[0] == pid] for pid in range(3 if not bidirectional else 4)}
    if not bidirectional:       # counters: layer 0, layer 1, then layer 1's projection group (2)
        assert by_program[0] == [(0, 0, 2, 0, 2, 0)] + [(0, s, 2, 0, 2, 0) for s in range(T)]
        assert by_program[1] == [(2, t, 0, t + 1, 0, 0) for t in range(T)] + [(1, 0, 2, 0, 2, 0)]
        assert by_program[2] == [(1, 0, 2, 1, 2, 0)] + [(1, s, 2, min(s + 2, T), 2, 0) for s in range(T)]
        return
    for g in range(2 * D):
        layer = g // D
        steps = by_program[g]
        if layer == 1:      # the projection, its one arrival, then every step asks for one arrival more
            projection, done, steps = steps[:T - T // 2], steps[T - T // 2], steps[T - T // 2 + 1:]
            assert projection == [(g, 0, 0, k, 1, k) for k in range(T // 2 + 1, T + 1)]
            assert done == (g, 1, g, 0, g, 0)
            assert steps == [(g, s + 1, 0, 0, 1, 0) for s in range(T)]
        else:               # no count asked of layer 0's groups (0, 1)
            assert steps == [(g, s, 0, 0, 1, 0) for s in range(T)]


def _polls_mutation(kind):
    """A replacement for triton_stack._unwritten, the test of every poll of the polled forward: never (data not
    yet written, -0.0, is used) or always (a reader that never accepts: a deadlock)."""
    @triton.jit
    def never(b):
        return tl.sum(tl.zeros([2], tl.int32)) > 0

    @triton.jit
    def always(b):
        return tl.sum(tl.zeros([2], tl.int32)) == 0
    return mock.patch.object(triton_stack, "_unwritten", {"no_wait": never, "never_done": always}[kind])


@needs_triton
@pytest.mark.parametrize("kind", ["no_wait", "never_done"])
@pytest.mark.parametrize("n,bidirectional", [(4, False), (6, False), (8, True)],
                         ids=["in-loop-projection", "projection-group", "pairs"])
def test_broken_polls_are_caught(kind, n, bidirectional):
    """The polled forward (no counter: every read between programs polled until written): a reader that does not
    wait reads elements not yet written, one that never accepts hangs; in a many-program run, never a pass.
    Unidirectional, its waits are not called at all (recorded); bidirectional, once per program of a layer ≥ 1:
    its group's projection complete, before its recurrence (``test_polled_bidirectional_projection_is_awaited``)."""
    L = 2
    D = 2 if bidirectional else 1
    H = stack_h(n, L=L, D=D, dtype=torch.float64)
    waits = []

    def run():
        recorded = (lambda *a: waits.append(a)) if not bidirectional else triton_stack._wait
        with _polls_mutation(kind), mock.patch.object(triton_stack, "_wait", recorded), torch.no_grad():
            model = lstm_gpu.LSTM(3, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float64,
                                  backend="triton", stack=True)
            ref = torch.nn.LSTM(3, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float64)
            ref.load_state_dict(model.state_dict())
            x = torch.randn(12, 3, 3, dtype=torch.float64)
            with concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)):
                got = model(x)[0]
            assert_close(got, ref(x)[0], 1e-10, what="y")
    verdict = _mutation_verdict(run)
    assert verdict == ("ProgramsHung" if kind == "never_done" else "AssertionError"), verdict
    assert not waits


@needs_triton
@pytest.mark.parametrize("kind", ["no_wait", "never_done"])
@pytest.mark.parametrize("n,bidirectional", [(4, False), (6, False), (8, True)],
                         ids=["in-loop-dy", "projection-group", "pairs"])
def test_broken_backward_polls_are_caught(kind, n, bidirectional, monkeypatch):
    """The polled backward (``triton_stack.POLLED_BACKWARD``; the forward through its counters here, so only the
    backward's polls are mutated): a reader of dz (its own group's, or the layer above's for a dy) or of a
    projection group's dy that does not wait reads elements not yet written: wrong gradients; one that never
    accepts hangs; in a many-program run, never a pass."""
    monkeypatch.setattr(triton_stack, "POLLED_FORWARD", False)
    L, D = 2, 2 if bidirectional else 1
    H = stack_h(n, L=L, D=D, dtype=torch.float64)

    verdict = _mutant_verdict(n, _polls_mutation(kind), L=L, bidirectional=bidirectional, H=H)
    assert verdict == ("ProgramsHung" if kind == "never_done" else "AssertionError"), verdict


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_polled_backward_negative_zero(bidirectional, dtype, monkeypatch):
    """A zero output gradient makes dz ±0 (dc_t = +0 times a negative g, c_{t-1} or tanh c gives -0.0): stored as
    +0.0 where other programs poll it, or a reader would wait forever (the poll's debug time-out turns that into
    an error). Every gradient zero, as nn.LSTM's."""
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "2000")
    torch.manual_seed(0)
    model = lstm_gpu.LSTM(3, 5, num_layers=2, bidirectional=bidirectional, dtype=dtype, backend="triton", stack=True)
    x = torch.randn(4, 2, 3, dtype=dtype, requires_grad=True)
    y, _ = model(x)
    y.backward(torch.zeros_like(y))
    assert x.grad is not None and not x.grad.any()
    assert all(not p.grad.any() for p in model.parameters())


@needs_triton
def test_polled_bidirectional_projection_is_awaited():
    """The polled bidirectional forward keeps one wait per program of a layer ≥ 1: its group's projection of the
    whole input complete (an arrival of each program, once), before its recurrence reads gates_x; skipped, in a
    many-program run, wrong outputs or a hang report, never a pass. Its waits, recorded with one program per
    group: exactly those, nothing per step."""
    n, L, D = 8, 2, 2
    H = stack_h(n, L=L, D=D, dtype=torch.float64)
    calls, real = [], triton_stack._wait

    def value(x):
        return int(x.handle.data.reshape(-1)[0]) if hasattr(x, "handle") else int(x)

    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        calls.append(tuple(value(v) for v in (g_a, n_a, g_b, n_b, g_c, n_c)))
        return real(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT)

    with mock.patch.object(triton_stack, "_wait", wait), torch.no_grad():
        model = lstm_gpu.LSTM(3, 4, num_layers=L, bidirectional=True, dtype=torch.float64, backend="triton",
                              stack=True)
        model(torch.randn(5, 2, 3, dtype=torch.float64))
    assert calls == [(2, 1, 2, 0, 2, 0), (3, 1, 3, 0, 3, 0)]     # groups (1, fwd), (1, rev), one program each

    verdict = _mutant_verdict(n, mock.patch.object(triton_stack, "_wait", _projection_not_awaited(triton_stack._wait,
                                                                                                n // (L * D))),
                              L=L, bidirectional=True, H=H)
    assert verdict != "right", "the polled projection's completion went unawaited, unnoticed"


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_polled_forward_beyond_its_budget_takes_the_counters(bidirectional, monkeypatch):
    """The polled forward's h ring ([L·D, T+1, B, H]) above ``triton_lstm.POLLED_SLOTS_BYTES``: the counters
    instead (their waits called), the same outputs and gradients as torch.nn.LSTM."""
    from lstm_gpu.kernels import triton_lstm
    calls, real = [], triton_stack._wait
    monkeypatch.setattr(triton_stack, "_wait", lambda *a: calls.append(1) or real(*a))
    stack_vs_torch(L=2, bidirectional=bidirectional, dtype=torch.float64)   # polled: the backward's waits
    polled = len(calls)                                                     # (and bidirectional, 2 more) only
    calls.clear()
    monkeypatch.setattr(triton_lstm, "POLLED_SLOTS_BYTES", 16)
    stack_vs_torch(L=2, bidirectional=bidirectional, dtype=torch.float64)
    assert len(calls) > polled, (len(calls), polled)


@needs_triton
@pytest.mark.parametrize("layers,bidirectional", [(2, False), (3, False), (2, True)])
def test_polled_forward_negative_zero(layers, bidirectional, monkeypatch):
    """The polled forward marks what is not yet written with the bits of -0.0: an h0 of -0.0, and outputs of the
    layer below that round to -0.0 (o ≈ σ(-17) times a negative tanh c, fp16), are stored as +0.0 where another
    program reads them, or the reader would wait forever (the poll's debug time-out turns that into an error).
    The top layer's y keeps its -0.0."""
    monkeypatch.setenv("LSTM_GPU_BARRIER_TIMEOUT", "2000")
    torch.manual_seed(0)
    L, H, D = layers, 5, 2 if bidirectional else 1
    model = lstm_gpu.LSTM(3, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float16, backend="triton",
                          stack=True)
    ref = torch.nn.LSTM(3, H, num_layers=L, bidirectional=bidirectional, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():           # output gate of every layer shut: o ≈ 4e-8
            if name.startswith("bias_ih"):
                p.zero_()
                p[3 * H:] = -17.0
                p[2 * H:3 * H] = -1.0                       # g < 0: c < 0, h = o·tanh(c) → -0.0 in fp16
            elif name.startswith("bias_hh"):
                p.zero_()
            elif name.startswith("weight"):
                p.mul_(0.1)
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = torch.randn(4, 2, 3)
    h0 = torch.full((L * D, 2, H), -0.0)
    with torch.no_grad():
        y, (hn, cn) = model(x.half(), (h0.half(), h0.half()))
        want, _ = ref(x.double(), (h0.double(), h0.double()))
    assert (torch.signbit(y) & (y == 0)).any()                # the case: outputs of -0.0
    assert_close(y, want, 4e-3, what="y")


@needs_triton
@pytest.mark.parametrize("bidirectional", [False, True])
def test_backward_waits_ask_only_for_what_a_step_reads(bidirectional, counters):
    """The backward's waits, recorded (one program per group), as (group waited on first, count, …), the top
    layer's programs first. Unidirectional (programs: layer 1, layer 0's projection group, layer 0; counters:
    layer 0, layer 1, the projection group): the projection group waits for layer 1 done with each step (its
    dz_t) and for itself done with the step before; layer 0, before its loop, for the projection of t = T-1 and after each step for its own group and
    the projection of the next step's dy, never for layer 1; layer 1 for its own group only. Bidirectional:
    layer 0 first projects its dy, time t once both directions of layer 1 have dz_t (after k = T//2 + 1 … T of
    their steps: t = k-1 and T-k), arrives once, then runs its steps, which ask for nothing (one program per
    group: its own dz is its own)."""
    from triton.runtime import interpreter
    T = 4
    calls, real = [], triton_stack._wait

    def value(x):
        return int(x.handle.data.reshape(-1)[0]) if hasattr(x, "handle") else int(x)

    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        calls.append((interpreter.interpreter_builder.grid_idx[0], *(value(v) for v in (g_a, n_a, g_b, n_b, g_c, n_c))))
        return real(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT)

    model = lstm_gpu.LSTM(3, 5, num_layers=2, bidirectional=bidirectional, dtype=torch.float64, backend="triton")
    y, _ = model(torch.randn(T, 2, 3, dtype=torch.float64))
    with mock.patch.object(triton_stack, "_wait", wait):
        y.sum().backward()
    by_program = {pid: [c[1:] for c in calls if c[0] == pid] for pid in range(3 if not bidirectional else 4)}
    if not bidirectional:
        assert by_program[0] == [(1, 0, 2, 0, 2, 0)] + [(1, s + 1, 2, 0, 2, 0) for s in range(T)]
        assert by_program[1] == [(2, s, 1, s + 1, 1, 0) for s in range(T)] + [(0, 0, 2, 0, 2, 0)]
        assert by_program[2] == [(0, 0, 2, 1, 2, 0)] + [(0, s + 1, 2, min(s + 2, T), 2, 0) for s in range(T)]
        return
    assert by_program[0] == by_program[1] == []          # the top layer's groups (3, 2): nothing to wait for
    for pid, g in ((2, 1), (3, 0)):
        assert by_program[pid] == [(g, 0, 2, k, 3, k) for k in range(T // 2 + 1, T + 1)] + [(g, 1, g, 0, g, 0)]


_BACKWARD = [False]


def _in_backward_only(mutated, real):
    """A wait that is ``mutated`` while the stack's backward kernel runs (``_backward_flagged``), else ``real``."""
    def wait(*args):
        return (mutated if _BACKWARD[0] else real)(*args)
    return wait


@contextlib.contextmanager
def _backward_flagged():
    real = triton_stack.stack_bwd

    def flagged(*args, **kwargs):
        _BACKWARD[0] = True
        try:
            return real(*args, **kwargs)
        finally:
            _BACKWARD[0] = False
    with mock.patch.object(triton_stack, "stack_bwd", flagged):
        yield


def _dy_projection_not_awaited(real, npg):
    """The real wait, except that a bidirectional layer 0 (groups 0, 1 of a 2-layer stack) does not wait for its
    group's dy projection to be complete before its recurrence (its own counter, npg: the one arrival)."""
    def wait(p_bar, g_a, n_a, g_b, n_b, g_c, n_c, TIMEOUT):
        done = (g_a == g_b) & (g_b == g_c) & (n_b == 0) & (n_a == npg) & (g_a < 2)
        return real(p_bar, g_a, tl.where(done, 0, n_a), g_b, n_b, g_c, n_c, TIMEOUT)
    return wait


@needs_triton
@pytest.mark.parametrize("n,bidirectional,mutation", [
    (8, True, _projection_one_step_early), (12, True, _projection_one_step_early),
    (8, True, _dy_projection_not_awaited), (6, False, _projection_one_step_early)],
    ids=["pairs-split-by-direction-early", "whole-rows-early", "pairs-not-awaited", "projection-group-early"])
def test_backward_projection_waits_for_what_it_reads(n, bidirectional, mutation, counters):
    """In the backward only: a layer's dy projected (dz_{l+1}·W_ih(l+1)) a step of the layer above before that
    step's dz is written, or a bidirectional recurrence reading its dy before its group's projection is complete,
    in a many-program run, gives wrong gradients or a hang report, never a pass. n = 8: two programs per group,
    the pairs split the projection by direction above; n = 12: three, whole rows; n = 6: unidirectional, layer
    0's projection group."""
    L, D, T = 2, 2 if bidirectional else 1, 12
    H = stack_h(n, L=L, D=D, dtype=torch.float64, start=9 if n == 12 else 2)
    npg = config.gpu_config(B=3, H=H, L=L, D=D, dtype=torch.float64, n_sm=n).programs_per_group
    real, real_half = triton_stack._wait, triton_stack._project_dy_half

    def half_1_late(*args):
        """The half a direction's first step reads from the partner, the last the partner projects, 0.3 s late
        (forward: half 1 of t = T-1; reverse: half 0 of t = 0): left to run free, the pairs finished together
        and the mutation went unnoticed in 3 of 6 runs; with the forward's half alone, in 1 of 14."""
        value = lambda x: int(x.handle.data.reshape(-1)[0]) if hasattr(x, "handle") else int(x)   # noqa: E731
        t, k_h, i_d = value(args[2]), value(args[3]), value(args[5])
        if (k_h, t) == ((1, T - 1) if i_d == 0 else (0, 0)):
            time.sleep(0.3)
        return real_half(*args)

    def run():
        with mock.patch.object(triton_stack, "_wait", _in_backward_only(mutation(real, npg), real)), \
                mock.patch.object(triton_stack, "_project_dy_half", half_1_late), _backward_flagged():
            stack_vs_torch(L=L, bidirectional=bidirectional, dtype=torch.float64, T=T, H=H,
                           context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    assert _mutation_verdict(run) != "right", f"the backward's mutated wait ({mutation.__name__}) went unnoticed"


@needs_triton
def test_layer_waits_for_its_dy_projection_group(counters):
    """In the backward only: a unidirectional layer 0 reading the dy of its next step before its projection group
    wrote it (one step early), projection slowed (50 ms a call) so the layer catches up with it, gives wrong
    gradients or a hang report, never a pass."""
    n, L = 6, 2
    H = stack_h(n, L=L, D=1, dtype=torch.float64)
    real, real_project = triton_stack._wait, triton_stack._project_dy

    def slow_project(*args):
        time.sleep(0.05)
        return real_project(*args)

    def run():
        mutated = _in_backward_only(_projection_group_one_step_early(real, 2), real)
        with mock.patch.object(triton_stack, "_wait", mutated), _backward_flagged(), \
                mock.patch.object(triton_stack, "_project_dy", slow_project):
            stack_vs_torch(L=L, bidirectional=False, dtype=torch.float64, T=12, H=H,
                           context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    assert _mutation_verdict(run) != "right", "the layer's early wait for its dy projection group went unnoticed"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_projection_group_moves_in_lockstep(pass_, dtype, counters):
    """A unidirectional projection group's counter is read as "all of it done with k steps" (NPG·k arrivals), so
    no program of the group may run two steps ahead of a partner. One projection program (the group's second)
    held back 0.3 s on its first step while the other is free to go on: the layer it feeds must still read only
    what is written. Before its programs awaited their own group's previous step, the free one brought the count
    to NPG alone, and the layer read its partner's units unwritten (NaN): 23 failures in 84 runs with a program
    of the group held back at one of its first 14 atomics; once in several hundred unperturbed CI-like runs."""
    from triton.runtime import interpreter
    n, L = 6, 2
    H = stack_h(n, L=L, D=1, dtype=dtype)
    cfg = config.gpu_config(B=3, H=H, L=L, D=1, dtype=dtype, n_sm=n)
    assert (cfg.proj_groups, cfg.programs_per_group) == (1, 2)
    held, name = 3, "_project" if pass_ == "forward" else "_project_dy"       # programs [layer, projection, layer]
    real, calls = getattr(triton_stack, name), []

    def held_back(*args):
        if interpreter.interpreter_builder.grid_idx[0] == held:
            calls.append(None)
            if len(calls) == 1:
                time.sleep(0.3)
        return real(*args)

    with mock.patch.object(triton_stack, name, held_back):
        stack_vs_torch(L=L, bidirectional=False, dtype=dtype, T=6, H=H,
                       context=lambda: concurrent_programs(n, deadline=MUTATION_DEADLINE, backends=("triton",)))
    assert len(calls) == 6, "the held-back program is not the projection group's second"


@needs_triton
def test_backward_pairs_up_an_odd_group():
    """Bidirectional on the tensor cores with an odd number of programs per group: the backward takes one more
    per group (its units all masked), so program pairs split the dy projection (whole rows, its backward staged
    263 KB of shared memory at H = 272-511 on sm_90); the forward keeps whole rows. Unidirectional and CUDA-core
    stacks keep their count. All programs at once, fp16: outputs and gradients as nn.LSTM's."""
    cfg = config.gpu_config(B=3, H=40, L=2, D=2, dtype=torch.float16, n_sm=16)
    assert (cfg.programs_per_group, cfg.projection_halves) == (3, 1)
    assert (cfg.backward().programs_per_group, cfg.backward().projection_halves, cfg.backward().num_programs) == (4, 2, 16)
    assert config.gpu_config(B=3, H=40, L=2, D=1, dtype=torch.float16, n_sm=16).backward_npg == 0
    assert config.gpu_config(B=3, H=40, L=2, D=2, dtype=torch.float64, n_sm=16).backward_npg == 0
    assert config.gpu_config(B=3, H=40, L=2, D=2, dtype=torch.float16, n_sm=12).backward_npg == 0    # no room
    stack_vs_torch(L=2, bidirectional=True, dtype=torch.float16, T=4, H=40,
                   context=lambda: concurrent_programs(16, backends=("triton",)))


@needs_triton
@pytest.mark.parametrize("n,bidirectional,dtype", [(6, False, torch.float16), (8, True, torch.float64)],
                         ids=["projection-groups", "pairs"])
def test_any_program_held_back_changes_nothing(n, bidirectional, dtype):
    """Each program of a 2-layer stack in turn (bidirectional: the second of each pair) held back 0.2 s at its
    first synchronisation (``concurrent_programs(hold=...)``), forward and backward, the others running on:
    every output and gradient as nn.LSTM's. A wait that counts arrivals without knowing whose they are fails here (the projection groups'
    did, caught in every run with program 3 held back). Whole rows (n = 12, 40 s here) and the 3-layer stacks
    were swept once, every program held at its 1st, 2nd, 3rd and 5th synchronisation: 232 runs, all right."""
    D = 2 if bidirectional else 1
    H = stack_h(n, L=2, D=D, dtype=dtype)
    for program in range(n) if not bidirectional else range(1, n, 2):      # pairs: the second of each (CI time)
        stack_vs_torch(L=2, bidirectional=bidirectional, dtype=dtype, T=4, H=H,
                       context=lambda: concurrent_programs(n, hold=(program, 1, 0.2), backends=("triton",)))


# ----------------------------------------------------------------------------------------------------
# One launch per pass for the recurrence of the whole stack
# ----------------------------------------------------------------------------------------------------

class _Counted:
    """A kernel that counts its launches and runs the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@needs_triton
def test_one_layer_one_direction_runs_the_single_layer_kernel():
    """stack="auto" with one layer and one direction: nothing to overlap, the single-layer kernel runs (one
    launch per pass either way); stack=True still runs the stack kernel."""
    from lstm_gpu.kernels import triton_lstm
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    model = lstm_gpu.LSTM(3, 5, dtype=torch.float64, backend="triton")
    assert "single-layer kernel" in model.backend_for(x, explain=True).reason
    fwd, layer_fwd = _Counted(triton_stack._stack_fwd_kernel), _Counted(triton_lstm._lstm_fwd_kernel)
    with mock.patch.object(triton_stack, "_stack_fwd_kernel", fwd), \
            mock.patch.object(triton_lstm, "_lstm_fwd_kernel", layer_fwd):
        model(x)
        assert (fwd.launches, layer_fwd.launches) == (0, 1)
        model.stack = True
        model(x)
        assert (fwd.launches, layer_fwd.launches) == (1, 1)


@needs_triton
@pytest.mark.parametrize("L,bidirectional", [(3, False), (2, True)])
def test_one_launch_per_pass(L, bidirectional):
    from lstm_gpu.kernels import triton_lstm
    fwd, bwd = _Counted(triton_stack._stack_fwd_kernel), _Counted(triton_stack._stack_bwd_kernel)
    layer_fwd, layer_bwd = _Counted(triton_lstm._lstm_fwd_kernel), _Counted(triton_lstm._lstm_bwd_kernel)
    model = lstm_gpu.LSTM(3, 5, num_layers=L, bidirectional=bidirectional, dtype=torch.float64, backend="triton")
    choice = model.backend_for(torch.zeros(4, 2, 3, dtype=torch.float64), explain=True)
    assert choice.backend == "triton" and "one launch for all" in choice.reason, choice
    with mock.patch.multiple(triton_stack, _stack_fwd_kernel=fwd, _stack_bwd_kernel=bwd), \
            mock.patch.multiple(triton_lstm, _lstm_fwd_kernel=layer_fwd, _lstm_bwd_kernel=layer_bwd):
        y, (h, c) = model(torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True))
        assert (fwd.launches, bwd.launches) == (1, 0)
        (y.sum() + h.sum() + c.sum()).backward()
    assert (fwd.launches, bwd.launches, layer_fwd.launches, layer_bwd.launches) == (1, 1, 0, 0)


# ----------------------------------------------------------------------------------------------------
# Dropout between layers: rate, scaling, eval, gradients against a reference applying the same mask
# ----------------------------------------------------------------------------------------------------

def _stacked(model, x):
    """lstm_gpu.stack's inputs from a module (float64 weights, as the module builds them)."""
    D = 2 if model.bidirectional else 1
    w = dict(zip(model._flat_weights_names, model._flat_weights))
    return [[w[f"{n}_l{k // D}{'_reverse' if k % D else ''}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            for k in range(model.num_layers * D)]


@needs_triton
def test_dropout_rate_and_scaling():
    """The dropped-out copy the layer above reads: each element 0 or y / (1 - p), zero at a rate near p; the
    top layer is never dropped; a new seed gives a new mask."""
    p, T, B, H = 0.3, 8, 4, 16
    torch.manual_seed(0)
    w_hh = torch.randn(2, 1, 4 * H, H, dtype=torch.float64) * 0.3
    w_ih = torch.randn(1, 1, 4 * H, H, dtype=torch.float64) * 0.3
    gx = torch.randn(T, B, 4 * H, dtype=torch.float64)
    h0 = c0 = torch.zeros(2, B, H, dtype=torch.float64)
    masks = []
    for seed in (1, 2):
        y, _, _, _, _, x = stack_op.stack_fwd(gx, w_ih, w_hh, None, h0, c0, None, p, torch.tensor([seed]), False)
        kept = x[0] != 0
        assert_close(x[0][kept], y[0][kept] / (1 - p), 1e-15, what="kept elements scaled by 1/(1-p)")
        assert abs((~kept).double().mean().item() - p) < 0.05, (~kept).double().mean()
        masks.append(kept)
    assert (masks[0] != masks[1]).any()


@needs_triton
@pytest.mark.parametrize("bidirectional,n", [(False, None), (True, None), (False, 6), (True, 8)],
                         ids=["uni", "bi", "uni-projection-group", "bi-pairs"])
def test_dropout_gradients_against_the_same_mask(bidirectional, n):
    """Training with dropout: y, h_n, c_n and every gradient equal a reference of single-layer nn.LSTMs whose
    inputs are dropped with the kernel's mask (read from its dropped-out copy, regenerated from the seed). n: one
    program per group (3 layers), or 2 layers under ``concurrent_programs(n)``, two programs per group (the
    dropped-out copy written by one group's programs, read by a projection group or by program pairs)."""
    p, T, B, I = 0.4, 4, 3, 3
    D = 2 if bidirectional else 1
    L, H = (3, 5) if n is None else (2, stack_h(n, L=2, D=D, dtype=torch.float64))
    context = contextlib.nullcontext if n is None else lambda: concurrent_programs(n, backends=("triton",))
    torch.manual_seed(0)
    ours = lstm_gpu.LSTM(I, H, num_layers=L, bidirectional=bidirectional, dropout=p, dtype=torch.float64,
                         backend="triton", stack=True).train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(7)
    got = run_model(ours, x, torch.zeros(L * D, B, H, dtype=torch.float64),
                    torch.zeros(L * D, B, H, dtype=torch.float64), None, False, context)
    torch.manual_seed(7)
    seed = torch.randint(2 ** 31 - 1, (1,))                     # what lstm_gpu.stack drew
    ws = _stacked(ours, x)
    w_ih0 = torch.cat([ws[d][0] for d in range(D)])
    gx = F.linear(x, w_ih0, torch.cat([ws[d][2] + ws[d][3] for d in range(D)]))
    w_ih = torch.stack([w[0] for w in ws[D:]]).view(L - 1, D, 4 * H, D * H)
    w_hh = torch.stack([w[1] for w in ws]).view(L, D, 4 * H, H)
    bias = torch.stack([w[2] + w[3] for w in ws[D:]]).view(L - 1, D, 4 * H)
    zeros = torch.zeros(L * D, B, H, dtype=torch.float64)
    with torch.no_grad():
        y_all, _, _, _, _, dropped = stack_op.stack_fwd(gx, w_ih, w_hh, bias, zeros, zeros, None, p, seed, False)
    masks = (dropped != 0).double() / (1 - p)                  # y is never exactly 0 here (no lengths)

    xi = x.clone().requires_grad_()
    inp, hs, cs, params = xi, [], [], {}
    for layer in range(L):
        ref = torch.nn.LSTM(inp.shape[-1], H, bidirectional=bidirectional, dtype=torch.float64)
        for name, _ in ref.named_parameters():
            getattr(ref, name).data.copy_(getattr(ours, name.replace("_l0", f"_l{layer}")))
        out, (h, c) = ref(inp)
        hs.append(h), cs.append(c)
        params.update({name.replace("_l0", f"_l{layer}"): prm for name, prm in ref.named_parameters()})
        inp = out * masks[layer] if layer < L - 1 else out
    hn, cn = torch.cat(hs), torch.cat(cs)
    (inp.square().sum() + hn.sum() + 0.5 * cn.square().sum()).backward()
    want = dict(y=inp, h_n=hn, c_n=cn, dx=xi.grad, **{name: prm.grad for name, prm in params.items()})
    for name, value in want.items():
        assert_close(got[name], value, 1e-11, what=name)


@needs_triton
def test_dropout_is_off_in_eval():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=3, dropout=0.5, dtype=torch.float64).eval()
    ours = lstm_gpu.LSTM(3, 5, num_layers=3, dropout=0.5, dtype=torch.float64, backend="triton", stack=True).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert_close(ours(x)[0], ref(x)[0], 1e-12, what="eval: no dropout")


@needs_triton
@pytest.mark.slow     # Dynamo + AOTAutograd around the interpreter
def test_compiled_fullgraph_training_with_dropout_matches_eager():
    """torch.compile(fullgraph=True) of a stack training with dropout (tests/test_compile.py's pattern). The mask's
    seed is a tensor drawn from torch's generator inside the graph, so the same torch.manual_seed gives eager's
    outputs and gradients, a new call draws a new mask (the seed is not baked into the graph), no call recompiles,
    and without fullgraph there is no graph break (a host int seed was a .item(): 3 breaks, 4 graphs)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lstm_gpu.LSTM(3, 5, num_layers=2, dropout=0.5, dtype=torch.float64, backend="triton", stack=True).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def run(m, seed):
        model.zero_grad()
        torch.manual_seed(seed)
        y, (h, c) = m(x)
        (y.square().sum() + h.sum() + c.sum()).backward()
        return [y, h, c] + [p.grad for p in model.parameters()]
    try:
        eager, got = run(model, 1), run(compiled, 1)
        with torch.compiler.set_stance("fail_on_recompile"):
            other = run(compiled, 2)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
    finally:
        torch._dynamo.reset()
    for name, a, b in zip(["y", "h_n", "c_n"] + [n for n, _ in model.named_parameters()], got, eager):
        assert_close(a, b, 1e-12, what=f"compiled vs eager {name}")
    assert not torch.equal(other[0], got[0]), "a new seed, a new mask"
    with torch.no_grad():
        assert not torch.equal(model.eval()(x)[0], got[0]), "dropout applied in training"


# ----------------------------------------------------------------------------------------------------
# The custom ops, and the module's choice between one launch and per-layer launches
# ----------------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dropout,seed", [(0.0, None), (0.5, torch.tensor([7]))], ids=["no-dropout", "dropout"])
def test_opcheck(dropout, seed):
    """Schema, fake tensors, autograd registration and AOT dispatch; with dropout, the seed tensor too."""
    T, B, H, L, D = 3, 2, 4, 2, 2
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)     # noqa: E731
    args = (r(T, B, D * 4 * H).requires_grad_(), r(L - 1, D, 4 * H, D * H).requires_grad_(),
            r(L, D, 4 * H, H).requires_grad_(), r(L - 1, D, 4 * H).requires_grad_(), r(L * D, B, H).requires_grad_(),
            r(L * D, B, H).requires_grad_(), torch.tensor([3, 2]), dropout, seed, True)
    torch.library.opcheck(stack_op.stack_fwd, args)


def test_explicit_stack_that_does_not_fit_says_why(monkeypatch):
    """On a GPU (a stand-in H100 here) a bidirectional H = 768 stack does not fit: stack="auto" runs per layer
    and says why, stack=True raises that reason; stack=False always runs per layer."""
    gpu = type("Props", (), dict(name="stand-in H100", multi_processor_count=132))()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: gpu)
    cuda = torch.device("cuda")
    model = lstm_gpu.LSTM(768, 768, num_layers=2, bidirectional=True, backend="triton", device="meta")
    assert "shared memory" in model._stack_reason(cuda, torch.float16, 16)
    model.stack = True
    with pytest.raises(ValueError, match="stack=True cannot run this call in one launch: .*shared memory"):
        model._stack_reason(cuda, torch.float16, 16)
    model = lstm_gpu.LSTM(512, 512, num_layers=2, bidirectional=True, backend="triton", stack=True, device="meta")
    assert model._stack_reason(cuda, torch.float16, 16) is None
    model.stack = False
    assert model._stack_reason(cuda, torch.float16, 16) == "stack=False"


@needs_triton
def test_backend_for_says_which():
    x = torch.zeros(4, 2, 3, dtype=torch.float64)
    for stack, words in (("auto", "one launch for all 2 layer(s) x 2 direction(s)"),
                         (False, "per-layer launches (stack=False)")):
        model = lstm_gpu.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, backend="triton", stack=stack)
        choice = model.backend_for(x, explain=True)
        assert choice.backend == "triton" and words in choice.reason, choice
    with pytest.raises(ValueError, match="stack must be"):
        lstm_gpu.LSTM(3, 5, stack="yes")


@needs_triton
def test_a_projection_runs_per_layer_and_stack_true_says_why():
    """The one-launch stack has no projection: stack="auto" runs the per-layer launches (each folds W_hr into
    W_hh) and matches nn.LSTM; stack=True raises, naming proj_size."""
    ref, ours = twin_lstms(3, 5, num_layers=2, proj_size=2, backend="triton")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    choice = ours.backend_for(x, explain=True)
    assert choice.backend == "triton" and "per-layer launches (proj_size > 0" in choice.reason, choice
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = ours(x), ref(x)
    for name, a, b in (("y", y, y_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(a, b, 1e-12, what=name)
    ours.stack = True
    with pytest.raises(ValueError, match="stack=True cannot run this call in one launch: proj_size > 0"):
        ours(x)


# ----------------------------------------------------------------------------------------------------
# The configuration: a pure function, and the reasons a stack does not fit
# ----------------------------------------------------------------------------------------------------

def _reason(H, L, bidirectional, dtype=torch.float16, B=16, n_sm=132, precision=None):
    from lstm_gpu.kernels import triton_config
    with mock.patch.object(triton_config, "FP32_PRECISION", precision):
        return config.unsupported_reason(device=torch.device("cuda"), dtype=dtype, hidden_size=H, num_layers=L,
                                         bidirectional=bidirectional, batch=B, n_sm=n_sm)


def test_gpu_config_of_the_modeled_stacks():
    uni = config.gpu_config(B=16, H=512, L=2, D=1, dtype=torch.float16, n_sm=132)
    assert (uni.ht, uni.programs_per_group, uni.num_programs, uni.block_b, uni.num_warps) == (16, 32, 96, 16, 8)
    assert uni.proj_groups == 1         # layer 1's projection group (forward), layer 0's (backward)
    assert (uni.split(1), uni.split(1), uni.split(4)) == (4, 4, 16)
    bi = config.gpu_config(B=16, H=512, L=2, D=2, dtype=torch.float16, n_sm=132)
    assert (bi.ht, bi.num_programs) == (16, 128)
    # the shared memory of the sm_90 compiles (forward and backward, triton 3.6): 144 KB, 224 KB, 112 KB, and 2 KB
    # for the compiler's scratch between 8 warps
    assert config.dot_shared_bytes(uni, L=2, D=1, dtype=torch.float16) == 147456 + 2048
    assert config.dot_shared_bytes(bi, L=2, D=2, dtype=torch.float16) == 229376 + 2048
    assert config.dot_shared_bytes(config.gpu_config(B=16, H=256, L=2, D=2, dtype=torch.float16, n_sm=132),
                                   L=2, D=2, dtype=torch.float16) == 114688 + 2048
    assert _reason(512, 2, False) is None and _reason(512, 2, True) is None and _reason(512, 4, False) is None
    assert _reason(400, 2, True) is None        # an odd group: its backward pairs up (one program more per group)
    one = config.gpu_config(B=16, H=512, L=1, D=2, dtype=torch.float16, n_sm=132)
    # one layer's backward: W_hh columns and the whole dz row, 64 + 64 KB as compiled (its forward 64 + 16 KB)
    assert config.dot_shared_bytes(one, L=1, D=2, dtype=torch.float16) == 131072 + 2048
    assert config.dot_shared_bytes(one, L=1, D=2, dtype=torch.float16, backward=False) == 81920 + 2048
    assert _reason(512, 1, True) is None


@pytest.mark.parametrize("case,words", [
    (dict(H=768, L=2, bidirectional=True), "shared memory"),        # W_ih of layer 1 is 2H wide
    (dict(H=1024, L=2, bidirectional=False), "shared memory"),
    # one bidirectional layer: its forward fits (160 KB) but its backward stages the whole dz row (256 KB): passed,
    # a GPU refused it (the first GPU run's smoke grid, H = 768 and 1024, 2026-11-28)
    (dict(H=768, L=1, bidirectional=True), "264192 bytes of shared"),
    (dict(H=768, L=1, bidirectional=True, B=1), "264192 bytes of shared"),
    (dict(H=512, L=2, bidirectional=False, dtype=torch.float32, precision="tf32"), "shared memory"),
    (dict(H=64, L=4, bidirectional=True, n_sm=6), "= 8 programs, more than the 6 SMs"),   # a group per SM at least
    (dict(H=64, L=2, bidirectional=False, B=17), "batch 17 > 16"),
    (dict(H=64, L=2, bidirectional=False, dtype=torch.float64), "tensor cores only"),
    (dict(H=64, L=2, bidirectional=False, dtype=torch.float32), "tensor cores only"),
])
def test_stacks_that_do_not_fit_say_why(case, words):
    reason = _reason(**case)
    assert reason is not None and words in reason, reason


def test_programs_fit_the_sms_and_each_group_splits_like_one_layer():
    for L in (1, 2, 3, 4):
        for D in (1, 2):
            for H in (16, 100, 256, 512, 768, 1024):
                cfg = config.gpu_config(B=8, H=H, L=L, D=D, dtype=torch.bfloat16, n_sm=132)
                assert cfg.ht >= 16 and cfg.ht & (cfg.ht - 1) == 0 and cfg.programs_per_group == -(-H // cfg.ht)
                if cfg.num_programs <= 132 and cfg.ht > 16:
                    assert -(-H // (cfg.ht // 2)) * L * D > 132, "HT is the smallest that fits"
                # projection groups: unidirectional stacks only, where they fit beside the layers
                fits = cfg.programs_per_group * (2 * L - 1) <= 132
                assert cfg.proj_groups == (L - 1 if D == 1 and fits else 0)


def test_cpu_interpreter_config_is_one_program_per_group():
    cfg = config.interpreter_config(B=3, H=5, L=3, D=2, dtype=torch.float64)
    assert (cfg.programs_per_group, cfg.num_programs, cfg.ht, cfg.use_dot) == (1, 6, 16, False)
    assert config.interpreter_config(B=3, H=5, L=2, D=1, dtype=torch.float16).use_dot


def test_static_model_csv_is_consistent():
    """reports/data/static-stack-h100.csv (python -m bench.static_stack, modeled from sm_90 code): labelled as
    modeled, the schedules' step counts (unidirectional: a projection group's stage per layer ≥ 1), ratio =
    stack / per-layer, no spill inside a time loop, at most 2 reloads in a projection loop."""
    import csv
    import pathlib
    rows = list(csv.DictReader(open(pathlib.Path(__file__).parents[1] / "reports/data/static-stack-h100.csv")))
    assert {(int(r["layers"]), int(r["directions"])) for r in rows} == {(2, 1), (2, 2)}
    for r in rows:
        T, L, D = int(r["T"]), int(r["layers"]), int(r["directions"])
        assert r["source"] == "modeled from sm_90 code, not measured"
        assert int(r["steps"]) == (T + 2 * (L - 1) if D == 1 else L * T) and int(r["per_layer_steps"]) == L * D * T
        assert abs(float(r["ratio"]) - float(r["stack_us"]) / float(r["per_layer_us"])) < 2e-3
        assert abs(float(r["train_ratio"]) - float(r["train_stack_us"]) / float(r["train_per_layer_us"])) < 2e-3
        assert int(r["fwd_loop_spills"]) == int(r["bwd_loop_spills"]) == 0
        assert int(r["fwd_projection_reloads"]) <= 2         # tests/test_triton_sm90.py's PROJECTION_RELOADS
        assert max(int(r["fwd_shared_bytes"]), int(r["bwd_shared_bytes"])) <= config.SHARED_BUDGET


@needs_triton
@pytest.mark.parametrize("name", ["weight_hh_l0", "weight_ih_l1", "bias_ih_l0"])
def test_a_weight_changed_in_place_before_backward_raises(name):
    """optimizer.step() before backward(): nn.LSTM raises at backward (its weights are saved); the stack runs on
    stacked copies, so its gradients were silently those of the old weights. Now it raises too."""
    model = lstm_gpu.LSTM(3, 4, num_layers=2, backend="triton", stack=True).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    y, _ = model(x)
    with torch.no_grad():
        getattr(model, name).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
