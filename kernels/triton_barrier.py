"""A grid-wide barrier written in Triton (Triton has none built in).

Supported: triton 3.6 and 3.9 (only ``tl.atomic_add`` with ``sem``/``scope`` and ``tl.debug_barrier`` are
used: 3.6 has no ``tl.atomic_load`` / ``tl.atomic_poll``).
Tested on: the Triton CPU interpreter with ONE program only (several programs run one after another
there, so a real wait would hang), and compiled for sm_90 by tests/test_triton_sm90.py. It has NEVER run
on a GPU with more than one program: tests/test_triton_gpu.py is the first real check.
Known risks: every program of the grid must be co-resident (launch with ``launch_cooperative_grid=True``
so the driver refuses an oversized grid instead of hanging); a kernel killed half-way leaves the counter
dirty, which is why the launcher hands every launch a freshly zeroed counter.

The algorithm is the textbook *sense-reversing centralised barrier* (Mellor-Crummey & Scott, 1991),
packed into one int32 word so that a single atomic carries both fields:

    bits 0..29   arrivals at the current barrier (0 .. n-1)
    bit  30      the sense: flips once per completed barrier

    arrive:   old = atomic_add(word, 1)                      (acq_rel, gpu scope)
    last one  (old's count == n-1): atomic_add(word, ±2^30 - n)   count back to 0 and the sense flipped
    others:   spin on atomic_add(word, 0) (acquire) until the sense differs from old's sense

The word returns to "count 0" after every barrier, so one zeroed word serves every step of a launch
(and, if it were kept, every later launch and CUDA-graph replay too). ±2^30 keeps the arithmetic inside
int32: +2^30 sets the sense bit, -2^30 clears it.

Why it is correct: all programs' stores before the barrier happen-before the last arrival (each arrival
is a release on the same atomic word, the last arrival's read-modify-write acquires them all), which
happens-before the flip (a release), which the spinners acquire. ``tl.debug_barrier()`` (bar.sync) on
either side orders the other threads of each program against the one thread doing the atomics. Data
written by other programs must then be loaded bypassing L1 (``cache_modifier=".cg"``), and the time loop
must be ``tl.range(..., num_stages=1)`` so the software pipeliner cannot hoist next step's loads above it.
"""
import triton
import triton.language as tl

SENSE_BIT = 1 << 30


@triton.jit
def grid_barrier(p_bar, NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr):
    """Wait until all NUM_PROGRAMS programs of the grid have arrived.

    ``p_bar``: two int32, zero at launch: the barrier word, and a time-out flag. TIMEOUT = 0: spin for as
    long as it takes. TIMEOUT > 0 (debug mode, LSTM_GPU_BARRIER_TIMEOUT): give up after that many polls and
    set the flag; once it is set every later barrier is skipped, so the launch ends in seconds instead of
    hanging, and the launcher raises. The flag costs one extra atomic per barrier, so it is off by default.
    """
    tl.debug_barrier()                                  # every thread's stores precede the release
    old = tl.atomic_add(p_bar, 1, sem="acq_rel", scope="gpu")
    sense = old & 0x40000000                            # SENSE_BIT
    if (old & 0x3FFFFFFF) == NUM_PROGRAMS - 1:          # last to arrive: reset the count, flip the sense
        flip = tl.where(sense == 0, 0x40000000, -0x40000000)
        tl.atomic_add(p_bar, flip - NUM_PROGRAMS, sem="release", scope="gpu")
    else:
        now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
        if TIMEOUT > 0:
            failed = tl.atomic_add(p_bar + 1, 0, sem="relaxed", scope="gpu")
            spins = 0
            while ((now & 0x40000000) == sense) & (failed == 0):
                now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
                spins += 1
                failed = tl.where(spins >= TIMEOUT, 1, failed)
            if spins >= TIMEOUT:
                tl.atomic_xchg(p_bar + 1, 1, sem="relaxed", scope="gpu")
        else:
            while (now & 0x40000000) == sense:
                now = tl.atomic_add(p_bar, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()                                  # no thread reads before the acquire completed


@triton.jit
def step_barrier(p_bar, NUM_PROGRAMS: tl.constexpr, TIMEOUT: tl.constexpr):
    """The end of a time step: the grid barrier; with a grid of one program (the CPU interpreter) only
    the barrier among that program's own threads."""
    if NUM_PROGRAMS > 1:
        grid_barrier(p_bar, NUM_PROGRAMS, TIMEOUT)
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


def barrier_state(device) -> "torch.Tensor":
    """A fresh zeroed barrier word + time-out flag for one launch.

    Fresh per launch (one tiny memset) rather than cached per device and stream: concurrent launches on
    different streams, CUDA-graph captures and a launch aborted half-way then never share or inherit a
    dirty counter. The barrier also resets itself after every step.
    """
    import torch
    return torch.zeros(2, dtype=torch.int32, device=device)


def raise_if_timed_out(state, what: str) -> None:
    """Debug mode only (it synchronises): raise if any barrier of the launch that used ``state`` timed out."""
    if int(state[1]) != 0:
        raise RuntimeError(
            f"lstm_gpu: the Triton {what} kernel's grid barrier timed out after LSTM_GPU_BARRIER_TIMEOUT="
            f"{barrier_timeout()} polls: not every program was co-resident, or one died. Its results are invalid.")
