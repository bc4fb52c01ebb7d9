"""The step synchronisation of the persistent Triton kernels: a grid-wide barrier with ONE serial L2
round trip per step (Triton has no grid barrier built in).

Supported: triton 3.6 and 3.9 (only ``tl.atomic_add`` with ``sem``/``scope`` and ``tl.debug_barrier`` are
used: 3.6 has no ``tl.atomic_load`` / ``tl.atomic_poll``).
Tested on: the Triton CPU interpreter, with one program and, through ``lstm_gpu.testing``, with every
program of a grid running at once in threads; compiled for sm_90 by tests/test_triton_sm90.py (whose
static read of the SASS, ``bench.static``, counts its round trips). Run on one GPU (an H200, 2026-11-28): the
floor kernel's barrier (bench/floor_scan.py) costs 1.1-1.2 µs a step from 2 to 64 programs; no hang, no time-out
in the smoke grid. tests/test_triton_gpu.py has not run yet.
Known risks: every program of the grid must be co-resident (launch with ``launch_cooperative_grid=True``
so the driver refuses an oversized grid instead of hanging); a kernel killed half-way leaves the counter
dirty, which is why the launcher hands every launch a freshly zeroed counter.

The algorithm: an EPOCH COUNTER. One int64 word counts arrivals since the launch began; step s of a
grid of n programs is complete when the word reaches n·(s+1):

    arrive:  atomic_add(word, 1)                 release, gpu scope; the result is not used, so no wait
    wait:    poll atomic_add(word, 0) (acquire)  until word ≥ n·(s+1)

The serial path of a step is the arrival travelling to L2 and one poll round trip that sees the last
arrival: one L2 round trip. The previous design, a sense-reversing barrier (Mellor-Crummey & Scott),
needed two more: every arrival waited for its atomic's result, and the last one then issued a second
atomic (the flip) that the others had to see. The counter never needs a reset inside a launch (it only
grows: 2^63 arrivals do not overflow), and a fresh zeroed word per launch keeps streams, CUDA-graph
replays (the memset is captured with the launch) and aborted launches apart.

Why it is correct: each program's stores of step s happen-before its release arrival; the poll that sees
n·(s+1) acquires every one of the n releases (release sequence on one atomic word), so every store of
step s of every program is visible after the wait. ``tl.debug_barrier()`` (bar.sync) on either side
orders the other threads of each program against the one thread doing the atomics. Data written by
other programs must then be loaded bypassing L1 (``cache_modifier=".cg"``), and the time loop must be
``tl.range(..., num_stages=1)`` so the software pipeliner cannot hoist next step's loads above it.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def grid_barrier(p_bar, s, NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr):
    """Step ``s`` (0-based within the launch) ends when all NUM_PROGRAMS programs have arrived.

    ``p_bar``: two int64, zero at launch: the arrival counter and a time-out flag. TIMEOUT = 0: wait for
    as long as it takes. TIMEOUT > 0 (debug mode, LSTM_GPU_BARRIER_TIMEOUT): give up after that many polls
    and set the flag; once it is set every later wait is skipped, so the launch ends in seconds instead
    of hanging, and the launcher raises. The flag costs one extra atomic per step, so it is off by default.
    """
    tl.debug_barrier()                                  # every thread's stores precede the release
    tl.atomic_add(p_bar, 1, sem="release", scope="gpu")                 # arrive
    target = tl.cast(s + 1, tl.int64) * NUM_PROGRAMS
    now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
    if TIMEOUT > 0:
        failed = tl.atomic_add(p_bar + 1, 0, sem="relaxed", scope="gpu")
        spins = 0
        while (now < target) & (failed == 0):
            now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
            spins += 1
            failed = tl.where(spins >= TIMEOUT, 1, failed)
        if spins >= TIMEOUT:
            tl.atomic_xchg(p_bar + 1, 1, sem="relaxed", scope="gpu")
    else:
        while now < target:
            now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()                                  # no thread reads before the acquire completed


@triton.jit
def step_barrier(p_bar, s, NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr):
    """The end of time step ``s`` (0-based within the launch): the grid barrier; with a grid of one
    program only the barrier among that program's own threads."""
    if NUM_PROGRAMS > 1:
        grid_barrier(p_bar, s, NUM_PROGRAMS, TIMEOUT)
    else:
        tl.debug_barrier()


def barrier_timeout() -> int:
    """Polls before a barrier gives up (LSTM_GPU_BARRIER_TIMEOUT; 0 = wait forever, the default)."""
    import os
    value = os.environ.get("LSTM_GPU_BARRIER_TIMEOUT", "0")
    try:
        spins = int(value)
    except ValueError:
        raise ValueError(f"LSTM_GPU_BARRIER_TIMEOUT must be a number of polls (an integer), got {value!r}") from None
    return max(spins, 0)


def barrier_state(device, groups: int = 1) -> "torch.Tensor":
    """A fresh zeroed arrival counter + time-out flag (int64) for one launch, one pair per group of
    programs that synchronise among themselves (the batch groups of the LSTM kernels).

    Fresh per launch (one tiny memset) rather than cached per device and stream: concurrent launches on
    different streams, CUDA-graph captures and a launch aborted half-way then never share or inherit a
    dirty counter.
    """
    return torch.zeros(2 * groups, dtype=torch.int64, device=device)


def raise_if_timed_out(state, what: str) -> None:
    """Debug mode only (it synchronises): raise if any barrier of the launch that used ``state`` timed out.
    Not while a CUDA graph is being captured (a sync there would break the capture): unchecked then; nor after a
    launch recorded on meta tensors (kernels/triton_sm90.py compiling it on a CPU), which ran nothing."""
    if state.is_meta or (state.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if bool(state[1::2].any()):
        raise RuntimeError(
            f"lstm_gpu: the Triton {what} kernel's grid barrier timed out after LSTM_GPU_BARRIER_TIMEOUT="
            f"{barrier_timeout()} polls: not every program was co-resident, or one died. Its results are invalid.")
