"""Testing aids: run the kernels' many-program path on CPU, every program of the grid at once.

On CPU the Triton interpreter (TRITON_INTERPRET=1) runs the programs of a grid one after another and
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs the blocks one after another, with ``grid.sync()``
syncing one block only. The backends therefore use one program / one block there, and the part of the
kernels that only a GPU runs (h exchanged through global memory between programs, the grid barrier, the
tile at the edge of H, several batch tiles per program) never executes. Under
``concurrent_programs(n)`` it does:

- triton: the launcher's ``choose_config`` returns the configuration the dispatcher would choose for a
  GPU with ``n`` SMs (``triton_config.gpu_config(..., n_sm=n)``), and the interpreter starts every program
  of the grid in its own thread (its program id made thread-local; its ``atomic_rmw``/``atomic_cas`` are
  C++ atomics and stay exact under threads).
- numba: the launcher's ``plan`` returns the grid the GPU rule would choose for ``n`` SMs (with the
  simulator's thread count), and the simulator runs every block's threads at once, with ``grid.sync()``
  a real barrier across all threads of the grid and dynamic shared memory per block (the simulator
  otherwise hands every block the same buffer).
- the one-launch stack (kernels/triton_stack.py): its launcher's ``choose_config`` returns the stack's GPU rule
  for ``n`` SMs (``triton_stack_config.gpu_config(..., n_sm=n)``), so every (layer, direction) group runs
  several programs at once and the waits between groups really wait.
- Both: a deadline per launch (a hang becomes ``ProgramsHung``, naming the programs that never
  finished and the kernel line each one is at), and an abort: when one program fails, the others are
  stopped (triton: at their next memory access; numba: at their next barrier) and the failure is raised.

LIMIT: the threads see memory sequentially consistent (one interpreter / one Python process, the GIL), so
cache modifiers (``.cg``), memory orderings (``sem=``/``scope=``), fences and the compiler's placement of
loads around the barrier are NOT tested here: the sm_90 code checks (tests/test_triton_sm90.py) and a
GPU test them. What this tests is the logic: counts, slots, masks, tiles, which program reads what when.

It patches only what it must (listed in ``_patch_triton`` / ``_patch_numba``) and restores all of it on
exit. It was written against the interpreter / simulator internals of triton 3.9 and numba-cuda 0.30
(``SUPPORTED``); with other versions it raises ``UnsupportedVersion`` (tests skip with its text, see
``unavailable_reason``).

Example (a CPU machine, before triton or numba is imported)::

    import os
    os.environ["TRITON_INTERPRET"] = "1"; os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import torch, lstm_gpu
    from lstm_gpu.testing import concurrent_programs
    with concurrent_programs(3):      # H = 10: HT = 4 units per program, 3 programs, the last one masked
        y, _ = lstm_gpu.lstm(torch.randn(4, 2, 5), torch.randn(40, 5), torch.randn(40, 10), backend="triton")
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import sys
import threading
import time

__all__ = ["concurrent_programs", "ProgramsHung", "UnsupportedVersion", "SUPPORTED", "unavailable_reason",
           "triton_programs", "triton_stack_programs", "numba_blocks"]

# The versions whose interpreter / simulator internals this module patches (major.minor).
SUPPORTED = {"triton": "3.9", "numba-cuda": "0.30"}
_ENV = {"triton": "TRITON_INTERPRET", "numba": "NUMBA_ENABLE_CUDASIM"}
_DIST = {"triton": "triton", "numba": "numba-cuda"}
DEFAULT_DEADLINE = 120.0            # seconds per launch
_GRACE = 30.0                       # seconds the other programs get to stop after an abort


class UnsupportedVersion(RuntimeError):
    """The installed triton / numba-cuda is not the one whose internals this module was written for."""


class ProgramsHung(TimeoutError):
    """A launch under ``concurrent_programs`` passed its deadline. ``waiting``: the program (triton) or
    block (numba) indices that had not finished; ``where``: for each, the kernel line it was at."""

    def __init__(self, message: str, waiting: list[int], where: dict[int, str]):
        super().__init__(message)
        self.waiting, self.where = waiting, where


class _Aborted(BaseException):
    """Raised inside a program thread to stop it (BaseException: kernel code never catches it)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def unavailable_reason(backend: str) -> str | None:
    """Why ``concurrent_programs`` cannot run ``backend`` ("triton" or "numba") here, or None."""
    var = _ENV[backend]
    if os.environ.get(var, "0") != "1":
        return f"concurrent_programs runs the {backend} backend on CPU only: it needs {var}=1"
    dist = _DIST[backend]
    have, want = _version(dist), SUPPORTED[dist]
    if have is None:
        return f"{dist} is not installed"
    if have.split("+")[0].split(".")[:2] != want.split("."):
        return (f"lstm_gpu.testing.concurrent_programs patches the internals of {dist} {want}.x, "
                f"but {dist} {have} is installed: port it (and re-check it catches a broken barrier) first")
    return None


# ----------------------------------------------------------------------------------------------------
# What the launchers get under the harness (pure functions, also used by the tests to pick shapes)
# ----------------------------------------------------------------------------------------------------

def triton_programs(n: int, *, B: int, H: int, dtype) -> int:
    """Programs the Triton launcher runs for this call under ``concurrent_programs(n)``: the grid of
    ``gpu_config(..., n_sm=n)``, i.e. cdiv(H, HT) with HT a power of two ≥ cdiv(H, n) (and ≥ the path's
    minimum). It is ``n`` exactly only for suitable H (e.g. broadcast path, HT = 4: H = 10 for n = 3)."""
    from .kernels import triton_config
    return triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n).num_programs


def triton_stack_programs(n: int, *, B: int, H: int, L: int, D: int, dtype) -> int:
    """Programs the Triton stack launcher's forward runs under ``concurrent_programs(n)``: L·D groups of
    cdiv(H, HT) programs, HT the smallest power of two (≥ 4 broadcast, ≥ 16 tl.dot) that keeps them ≤ n, and,
    unidirectional, L-1 projection groups of as many where they fit too (the backward has none)."""
    from .kernels import triton_stack_config
    return triton_stack_config.gpu_config(B=B, H=H, L=L, D=D, dtype=dtype, n_sm=n).num_programs


def _numba_plan(n: int, kind: str, dtype, H: int, B: int):
    from .kernels import numba_lstm
    p = numba_lstm.choose_grid(kind, dtype, H, B, sms=n, smem_limit=sys.maxsize, static_smem=0,
                               co_resident=lambda shared: n)
    if isinstance(p, str):
        raise ValueError(p)
    return numba_lstm.Plan(p.blocks, numba_lstm.SIM_THREADS, p.ht, numba_lstm.SIM_LANES, p.shared)


def numba_blocks(n: int, *, H: int, B: int = 1, dtype=None) -> int:
    """Blocks the Numba launcher runs under ``concurrent_programs(n)``: the GPU rule's grid for ``n`` SMs,
    cdiv(H, HT) with HT = cdiv(H, n) (``n`` exactly unless H is awkward, e.g. H = 9, n = 4 gives 3)."""
    import torch
    return _numba_plan(n, "fwd", dtype or torch.float32, H, B).blocks


# ----------------------------------------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------------------------------------

class _Patches:
    """setattr that remembers what it replaced (own attributes only, so inherited ones are deleted again)."""

    def __init__(self):
        self._saved = []

    def set(self, obj, name, value):
        self._saved.append((obj, name, vars(obj).get(name, _Patches)))
        setattr(obj, name, value)

    def restore(self):
        while self._saved:
            obj, name, old = self._saved.pop()
            if old is _Patches:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_ACTIVE = threading.Lock()


@contextlib.contextmanager
def concurrent_programs(n: int, *, deadline: float = DEFAULT_DEADLINE, stagger: bool = True,
                        backends=("triton", "numba"), hold: tuple[int, int, float] | None = None):
    """Run CPU calls of the triton and numba backends with ``n`` programs / blocks, all at once.

    Inside the ``with`` block every launch of the Triton kernels (interpreter) and of the Numba kernels
    (simulator) uses the grid a GPU with ``n`` SMs would get, ``triton_programs(n, ...)`` programs or
    ``numba_blocks(n, ...)`` blocks, and runs all of them concurrently, one thread per program (numba: one
    per simulated CUDA thread, as the simulator always does). The call raises ``ValueError`` if that grid
    is not exactly ``n`` programs/blocks: pick H so that it is (the two helpers say).

    ``deadline``: seconds one launch may take; past it the launch raises ``ProgramsHung`` naming the
    programs that had not finished and where each was (a deadlock, e.g. a barrier counting one program
    too many). When a program raises, the others are stopped and the error is raised from the launch.
    ``stagger``: program (block) i starts only once program i-1 has reached its first synchronisation
    (triton: its first atomic operation or volatile load, i.e. its arrival at the barrier; numba: its
    first ``grid.sync()``) or has finished. Started all at once, the programs run in lockstep and a barrier
    that does not wait can go unnoticed (each program happens to write its slot before the others read
    it); staggered, such a barrier lets program 0 run on into slots the later programs have not written
    (NaN in the tests' NaN-filled outputs), every time. After the first barrier they all run at once.
    ``hold``: (program, k, seconds), triton only: in every launch, that program stops ``seconds`` at its k-th
    synchronisation (k = 1: its first atomic or volatile load), the others running on, as a program on a slow
    or descheduled SM would. A wait that counts arrivals without knowing whose they are (a group whose
    programs do not wait for each other, one running two steps ahead of a partner) lets a reader in before the
    held program's write: the stack's projection groups did, caught only by holding one back.
    ``backends``: which of "triton", "numba" to patch; each needs its CPU mode (TRITON_INTERPRET=1 /
    NUMBA_ENABLE_CUDASIM=1) and the version in ``SUPPORTED``, else ``UnsupportedVersion`` /
    ``RuntimeError`` says why (``unavailable_reason`` gives the same text without raising).

    LIMIT: the threads see memory sequentially consistent, so cache modifiers, memory orderings and fences
    are not tested (see the module docstring). Not re-entrant; not for use from several threads.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if hold is not None and not (len(hold) == 3 and 0 <= hold[0] < n and hold[1] >= 1 and hold[2] >= 0):
        raise ValueError(f"hold must be (program in 0 … {n - 1}, k ≥ 1, seconds ≥ 0), got {hold!r}")
    for backend in backends:
        why = unavailable_reason(backend)
        if why is not None:
            raise (UnsupportedVersion if "patches the internals" in why else RuntimeError)(why)
    if not _ACTIVE.acquire(blocking=False):
        raise RuntimeError("concurrent_programs is already active (it is not re-entrant)")
    patches = _Patches()
    try:
        if "triton" in backends:
            _patch_triton(patches, n, deadline, stagger, hold)
        if "numba" in backends:
            _patch_numba(patches, n, deadline, stagger)
        yield
    finally:
        patches.restore()
        _ACTIVE.release()


def _kernel_location(thread: threading.Thread) -> str:
    """The innermost frame of ``thread`` that is kernel code (not triton, numba, numpy, the stdlib or
    this module), as file:line (function)."""
    frame = sys._current_frames().get(thread.ident)
    skip = (os.sep + "triton" + os.sep, os.sep + "numba", os.sep + "numpy" + os.sep, os.path.dirname(os.__file__),
            __file__)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith("<") and not any(s in name for s in skip if s):
            return f"{os.path.basename(name)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside the kernel"


class _Launch:
    """One launch's programs: who is still running, the first failure, the abort flag."""

    def __init__(self, what: str, n: int, deadline: float, stagger: bool, unit: str = "programs"):
        self.what, self.n, self.deadline, self.unit = what, n, deadline, unit
        self.abort = threading.Event()
        self.wake = threading.Event()           # a program failed, or all finished
        self.lock = threading.Lock()
        self.running = set(range(n))
        self.started = set()
        self.failure = None                     # (program, exception) of the first failure
        self.gates = [threading.Event() for _ in range(n)]      # set: program i may start
        for gate in self.gates[:1] if stagger else self.gates:
            gate.set()

    def await_turn(self, program: int) -> bool:
        """Wait for ``program``'s turn to start (see ``stagger``); False if the launch was aborted."""
        self.gates[program].wait()
        with self.lock:
            self.started.add(program)
        return not self.abort.is_set()

    def open_next(self, program: int) -> None:
        """``program`` reached its first synchronisation (or finished): the next one may start."""
        if program + 1 < self.n:
            self.gates[program + 1].set()

    def stop(self) -> None:
        self.abort.set()
        for gate in self.gates:
            gate.set()

    def finished(self, program: int, error: BaseException | None = None):
        with self.lock:
            self.running.discard(program)
            self.open_next(program)
            if error is not None and self.failure is None and not self.abort.is_set():
                self.failure = (program, error)
                self.stop()
            if error is not None or not self.running:
                self.wake.set()

    def wait(self, threads: dict, stop_others) -> None:
        """Wait for the programs (``threads``: index → the thread whose stack locates it); stop them all
        on a failure or at the deadline; raise what happened."""
        end = time.monotonic() + self.deadline
        try:
            while True:
                self.wake.wait(timeout=max(0.0, end - time.monotonic()))
                self.wake.clear()
                with self.lock:
                    done = not self.running or self.failure is not None
                if done or time.monotonic() >= end:
                    break
        except BaseException:           # e.g. KeyboardInterrupt: never leave programs spinning behind
            self.stop()
            stop_others()
            raise
        hung = None
        with self.lock:
            if self.failure is None and self.running:
                waiting = sorted(self.running)
                where = {p: _kernel_location(threads[p]) if p in self.started else
                         f"not started (waiting for {p - 1} to reach its first barrier)" for p in waiting}
                hung = (waiting, where)
                self.stop()
        if self.abort.is_set():
            stop_others()
            for t in threads.values():
                t.join(timeout=_GRACE)
            stuck = [p for p, t in threads.items() if t.is_alive()]
            if stuck:               # cannot happen with the kernels as written; say so rather than hang
                raise RuntimeError(f"concurrent_programs: {self.what} {self.unit} {stuck} did not stop after an "
                                   f"abort")
        if hung is not None:
            waiting, where = hung
            lines = "; ".join(f"{p} at {where[p]}" for p in waiting)
            raise ProgramsHung(
                f"{self.what}: {len(waiting)} of {self.n} {self.unit} still running after the {self.deadline:g} s "
                f"deadline (a deadlock, e.g. at the grid barrier): {lines}", waiting, where)


# ---------------------------------------------------------------- triton (interpreter, triton 3.9) ---

_tls = threading.local()            # in a program thread: .launch (the _Launch), .grid_idx


def _patch_triton(patches: _Patches, n: int, deadline: float, stagger: bool, hold=None) -> None:
    from triton.runtime import interpreter as interp

    from .kernels import triton_config, triton_lstm, triton_stack, triton_stack_config

    # 1. Config: what a GPU with n SMs gets; refuse a grid that is not n programs.
    accepts = inspect.signature(triton_config.gpu_config).parameters

    def choose_config(*, B, H, dtype, device=None, **extra):
        if not any(p.kind is p.VAR_KEYWORD for p in accepts.values()):   # (a wrapper passes all on)
            extra = {k: v for k, v in extra.items() if k in accepts}      # any later keyword it grows
        cfg = triton_config.gpu_config(B=B, H=H, dtype=dtype, n_sm=n, **extra)
        if cfg.num_programs != n:
            raise ValueError(f"concurrent_programs({n}): the triton config for B={B}, H={H}, {dtype} has "
                             f"{cfg.num_programs} programs (HT={cfg.ht}), not {n}: choose H so that it is "
                             f"(lstm_gpu.testing.triton_programs)")
        return cfg
    patches.set(triton_lstm, "choose_config", choose_config)

    # 1b. The one-launch stack (kernels/triton_stack.py): its GPU rule for n SMs, CUDA-core path included
    #     (on a GPU that path runs per layer, but the kernel code is the same), exactly n programs in one of
    #     its passes (a bidirectional backward may take more than its forward: ``StackConfig.backward``).
    def choose_stack_config(*, B, H, L, D, dtype, device=None):
        cfg = triton_stack_config.gpu_config(B=B, H=H, L=L, D=D, dtype=dtype, n_sm=n)
        if n not in (cfg.num_programs, cfg.backward().num_programs):
            raise ValueError(f"concurrent_programs({n}): the triton stack config for B={B}, H={H}, {L} layer(s) x "
                             f"{D} direction(s), {dtype} has {cfg.num_programs} programs (HT={cfg.ht}), not {n}: "
                             f"choose H so that it is (lstm_gpu.testing.triton_stack_programs)")
        return cfg
    patches.set(triton_stack, "choose_config", choose_stack_config)

    # 2. The program id, thread-local (the interpreter keeps one builder for the whole process).
    def get_idx(builder):
        return getattr(_tls, "grid_idx", None) or vars(builder).get("grid_idx")

    def set_idx(builder, value):
        _tls.grid_idx = value
    patches.set(interp.InterpreterBuilder, "grid_idx", property(get_idx, set_idx))

    # 3. The abort: a stopped program raises at its next memory access (every wait loop reads memory).
    #    The stagger: a program's first atomic or volatile load (its first synchronisation) lets the next start.
    #    The hold: the held program stops at its k-th synchronisation (after letting the next one start).
    def guarded(method, sync):
        def check_then_call(self, *args, **kwargs):
            launch = getattr(_tls, "launch", None)
            if launch is not None:
                if launch.abort.is_set():
                    raise _Aborted()
                if sync(*args, **kwargs):
                    _tls.synced += 1
                    if _tls.synced == 1:
                        launch.open_next(_tls.program)
                    if hold is not None and (_tls.program, _tls.synced) == tuple(hold[:2]):
                        launch.abort.wait(hold[2])
            result = method(self, *args, **kwargs)
            if launch is not None and sync(*args, **kwargs):
                time.sleep(0)       # yield the GIL: a program polling at the barrier does not hold it for
            return result           # 5 ms slices while the one it waits for works (n = 8: about 3x faster)
        return check_then_call

    def volatile(ptrs, mask, other, cache_policy, is_volatile):
        return is_volatile
    for name, sync in (("create_masked_load", volatile), ("create_masked_store", lambda *a, **k: False),
                       ("create_atomic_rmw", lambda *a, **k: True), ("create_atomic_cas", lambda *a, **k: True)):
        patches.set(interp.InterpreterBuilder, name, guarded(getattr(interp.InterpreterBuilder, name), sync))

    # 4. The grid loop: every program in its own thread.
    patches.set(interp.GridExecutor, "__call__", _threaded_grid_call(interp, deadline, stagger))


def _threaded_grid_call(interp, deadline: float, stagger: bool):
    import numpy as np
    import triton

    def __call__(self, *args_dev, **kwargs):
        """triton 3.9's GridExecutor.__call__ with its loop over the grid replaced by one thread per program."""
        argspec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patch_scope = interp._patch_lang(self.fn)
        try:
            call_args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {k: v if k in self.constexprs else interp._implicit_cvt(v) for k, v in call_args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            assert len(grid) <= 3, "grid must have at most 3 dimensions"
            grid = tuple(grid) + (1, ) * (3 - len(grid))
            interp.interpreter_builder.set_grid_dim(*grid)
            points = list(np.ndindex(*grid))
            launch = _Launch(f"triton {self.fn.__name__}", len(points), deadline, stagger)

            def program(i, point):
                if not launch.await_turn(i):               # aborted before its turn: never run
                    return launch.finished(i)
                _tls.launch, _tls.program, _tls.synced = launch, i, 0
                interp.interpreter_builder.set_grid_idx(*(int(v) for v in point))
                mine = {k: v if k in self.constexprs else interp._implicit_cvt(v) for k, v in call_args.items()}
                try:
                    self.fn(**mine)
                except _Aborted:
                    launch.finished(i)
                except BaseException as e:         # noqa: BLE001  (handed to the launching thread)
                    launch.finished(i, e)
                else:
                    launch.finished(i)
                finally:
                    _tls.launch = _tls.grid_idx = _tls.program = None

            threads = {i: threading.Thread(target=program, args=(i, p), daemon=True,
                                           name=f"triton program {p[0]}") for i, p in enumerate(points)}
            for t in threads.values():
                t.start()
            launch.wait(threads, stop_others=lambda: None)      # the abort flag stops them
            if launch.failure is not None:
                program_idx, e = launch.failure
                if triton.knobs.compilation.front_end_debugging:
                    raise e
                raise interp.InterpreterError(
                    f"program {points[program_idx]} of {len(points)} (running concurrently): {e!r}") from e
        finally:
            patch_scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    return __call__


# ------------------------------------------------------------------ numba (simulator, numba-cuda 0.30) ---

class _NumbaLaunch(_Launch):
    def __init__(self, n_blocks: int, threads_per_block: int, deadline: float, stagger: bool):
        super().__init__("numba", n_blocks, deadline, stagger, unit="blocks")
        self.index = {}             # block index (x, y, z) → its place in the launch order
        self.barrier = threading.Barrier(n_blocks * threads_per_block)
        self.shared = {}            # block index → that block's own FakeCUDAShared
        self.managers = {}          # block index → its BlockManager


_numba = {"pending": [], "launch": None}


def _patch_numba(patches: _Patches, n: int, deadline: float, stagger: bool) -> None:
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi

    from .kernels import numba_kernels, numba_lstm

    if not numba_kernels.SIMULATOR:
        raise RuntimeError("concurrent_programs: the numba kernels were built for a GPU (NUMBA_ENABLE_CUDASIM "
                           "was not 1 when lstm_gpu.kernels.numba_kernels was imported)")

    # 1. The plan: the GPU rule's grid for n SMs, with the simulator's block size and lanes.
    def plan(kind, dtype, H, B, device_index=None):
        p = _numba_plan(n, kind, dtype, H, B)
        if p.blocks != n:
            raise ValueError(f"concurrent_programs({n}): the numba {kind} plan for H={H} has {p.blocks} blocks "
                             f"(HT={p.ht}), not {n}: choose H so that it is (lstm_gpu.testing.numba_blocks)")
        return p
    patches.set(numba_lstm, "plan", plan)

    original_run = sim_kernel.BlockManager.run
    original_shared = kernelapi.FakeCUDAShared.array

    # 2. Blocks all at once. The simulator's launch loop builds a BlockManager per block and runs it to the
    # end before the next; this one only queues, and the last block's run() starts every block, each
    # block's BlockManager in its own thread, and waits for all of them.
    class ConcurrentBlockManager(sim_kernel.BlockManager):
        def run(self, grid_point, *args):
            pending = _numba["pending"]
            pending.append((self, grid_point, args))
            total = 1
            for d in self._grid_dim:
                total *= d
            if len(pending) < total:
                return
            _numba["pending"] = []
            threads_per_block = 1
            for d in self._block_dim:
                threads_per_block *= d
            launch = _NumbaLaunch(total, threads_per_block, deadline, stagger)
            _numba["launch"] = launch
            try:
                _run_blocks(launch, pending, original_run, sim_kernel)
            finally:
                _numba["launch"] = None
    patches.set(sim_kernel, "BlockManager", ConcurrentBlockManager)

    # 3. grid.sync(): a barrier over every thread of the grid.
    def sync(self):
        launch = _numba["launch"]
        if launch is None:
            return threading.current_thread().syncthreads()
        if launch.abort.is_set():
            raise _abort_error()
        launch.open_next(launch.index[tuple(threading.current_thread().blockIdx)])
        try:
            launch.barrier.wait()
        except threading.BrokenBarrierError:
            raise _abort_error() from None
    patches.set(kernelapi.GridGroup, "sync", sync)

    # 4. Shared memory per block (dynamic and static), created under a lock.
    def shared_array(self, shape, dtype, alignment=None):
        launch = _numba["launch"]
        if launch is None:
            return original_shared(self, shape, dtype, alignment)
        block = tuple(threading.current_thread().blockIdx)
        with launch.lock:
            own = launch.shared.get(block)
            if own is None:
                own = launch.shared[block] = kernelapi.FakeCUDAShared(self._dynshared_size)
            return original_shared(own, shape, dtype, alignment)
    patches.set(kernelapi.FakeCUDAShared, "array", shared_array)


def _abort_error():
    return RuntimeError("concurrent_programs: launch aborted (another block failed, or the deadline passed)")


def _run_blocks(launch: _NumbaLaunch, pending, original_run, sim_kernel) -> None:
    def block(i, manager, grid_point, args):
        if not launch.await_turn(i):                   # aborted before its turn: never run
            return launch.finished(i)
        try:
            original_run(manager, grid_point, *args)
        except BaseException as e:                  # noqa: BLE001  (handed to the launching thread)
            launch.finished(i, e)
        else:
            launch.finished(i)

    managers = {}
    for i, (manager, grid_point, args) in enumerate(pending):
        managers[i] = threading.Thread(target=block, args=(i, manager, grid_point, args), daemon=True,
                                       name=f"numba block {grid_point}")
        launch.managers[i] = manager
        launch.index[tuple(int(v) for v in grid_point)] = i
    for t in managers.values():
        t.start()

    def block_threads(i):
        return [t for t in threading.enumerate()
                if isinstance(t, sim_kernel.BlockThread) and t._manager is launch.managers[i]]

    class Where:                                    # the thread whose stack locates block i
        def __init__(self, i):
            self.i = i

        @property
        def ident(self):
            alive = block_threads(self.i)
            return alive[0].ident if alive else None

        def join(self, timeout=None):
            managers[self.i].join(timeout)

        def is_alive(self):
            return managers[self.i].is_alive()

    def stop_all():
        launch.stop()
        launch.barrier.abort()
        for i in managers:
            for t in block_threads(i):
                t.abort = True
                t.syncthreads_blocked = False
                t.syncthreads_event.set()

    launch.wait({i: Where(i) for i in managers}, stop_all)
    if launch.failure is not None:
        i, e = launch.failure
        raise type(e)(f"block {tuple(pending[i][1])} of {len(pending)} (running concurrently): {e}").with_traceback(
            e.__traceback__) from e
