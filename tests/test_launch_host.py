"""The host side of the kernel launches, checked on CPU with fakes standing in for the GPU:

- the launch happens on the INPUT's device, not on the current one (Triton: under
  ``torch.cuda.device(input.device)``; Numba: in the input's device context);
- numba's >48 KB shared-memory opt-in calls the driver function that fits the handle numba hands out
  (CUkernel: cuKernelSetAttribute; CUfunction: cuFuncSetAttribute);
- a repeated numba launch does not compile, type, query occupancy or call the driver attribute again.

What the fakes cannot show (that the driver accepts these calls) is tests/test_numba_gpu.py's and
bench/gpu_session.sh's job.
"""
import contextlib
import types

import pytest
import torch

from lstm_gpu.kernels import host, numba_kernels, numba_lstm


# ---- a fake "current CUDA device" ------------------------------------------------------------------
class FakeCurrent:
    """torch.cuda's current device, faked: ``torch.cuda.device(d)`` switches it, and switches it back."""

    def __init__(self, index=0):
        self.index = index

    def device(self, d):
        fake = self

        class _Guard:
            def __enter__(self):
                self.prev, fake.index = fake.index, torch.device(d).index
            def __exit__(self, *exc):                     # noqa: E301
                fake.index = self.prev
                return False
        return _Guard()


@pytest.fixture
def current(monkeypatch):
    cur = FakeCurrent(0)
    monkeypatch.setattr(torch.cuda, "device", cur.device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: cur.index)
    return cur


def test_device_guard_makes_the_input_device_current_and_restores(current):
    with host.device_guard(torch.device("cuda", 1)):
        assert current.index == 1
    assert current.index == 0
    with host.device_guard(torch.device("cpu")):      # the interpreter: nothing to switch
        assert current.index == 0


def test_device_index_of_a_bare_cuda_device_is_the_current_one(current):
    current.index = 3
    assert host.device_index(torch.device("cuda")) == 3
    assert host.device_index(torch.device("cuda", 1)) == 1


# ---- Triton ----------------------------------------------------------------------------------------
def test_triton_launches_inside_the_input_device_guard(monkeypatch):
    """lstm_fwd / lstm_bwd launch their kernel inside host.device_guard(the input's device)."""
    from lstm_gpu.kernels import triton_lstm
    state = {"inside": None}
    guarded, launched = [], []

    @contextlib.contextmanager
    def guard(device):
        guarded.append(device)
        state["inside"] = device
        try:
            yield
        finally:
            state["inside"] = None

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(state["inside"])

    monkeypatch.setattr(host, "device_guard", guard)
    monkeypatch.setattr(triton_lstm, "_lstm_fwd_kernel", Kernel())
    monkeypatch.setattr(triton_lstm, "_lstm_bwd_kernel", Kernel())
    T, B, H = 2, 2, 4
    gx, h0, c0, w = torch.randn(T, B, 4 * H), torch.zeros(B, H), torch.zeros(B, H), torch.randn(4 * H, H)
    cfg = triton_lstm.LSTMConfig(ht=16, block_k=16, block_b=2, use_dot=False, precision="ieee", num_warps=4,
                                 num_programs=1)
    _, _, _, gates, cells = triton_lstm.lstm_fwd(gx, h0, c0, w, config=cfg)
    triton_lstm.lstm_bwd(torch.zeros(T, B, H), h0, c0, gates, cells, c0, w, config=cfg)
    assert launched == [gx.device, gx.device] and guarded == [gx.device, gx.device]


# ---- Numba: the shared-memory opt-in on both handle kinds ------------------------------------------
def _fake_drv(binding):
    calls = []

    class Driver:
        def cuKernelSetAttribute(self, attr, value, kernel, dev):
            calls.append(("cuKernelSetAttribute", attr, value, kernel, dev))

        def cuFuncSetAttribute(self, func, attr, value):
            calls.append(("cuFuncSetAttribute", func, attr, value))
    return types.SimpleNamespace(binding=binding, driver=Driver()), calls


def _kernel_with_handle(handle, device_id=1):
    cufunc = types.SimpleNamespace(handle=handle, device=types.SimpleNamespace(id=device_id))
    return types.SimpleNamespace(_codelibrary=types.SimpleNamespace(get_cufunc=lambda: cufunc))


def _bindings():
    try:
        from cuda.bindings import driver
        return driver
    except ImportError:       # no cuda-bindings: stand-ins with the same names
        class CUkernel: ...
        class CUfunction: ...                            # noqa: E701
        attrs = types.SimpleNamespace(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8)
        return types.SimpleNamespace(CUkernel=CUkernel, CUfunction=CUfunction, CUfunction_attribute=attrs)


def test_shared_memory_opt_in_on_a_cukernel_handle():
    """numba-cuda >= 0.24 hands out a CUkernel (modules loaded as libraries): cuKernelSetAttribute."""
    b = _bindings()
    drv, calls = _fake_drv(b)
    handle = b.CUkernel()
    numba_lstm.allow_shared(_kernel_with_handle(handle, device_id=1), 100_000, drv=drv)
    attr = b.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert calls == [("cuKernelSetAttribute", attr, 100_000, handle, 1)]


def test_shared_memory_opt_in_on_a_cufunction_handle():
    """Older numba-cuda hands out a CUfunction: cuFuncSetAttribute (cuKernelSetAttribute would fail)."""
    b = _bindings()
    drv, calls = _fake_drv(b)
    handle = b.CUfunction()
    numba_lstm.allow_shared(_kernel_with_handle(handle), 100_000, drv=drv)
    attr = b.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert calls == [("cuFuncSetAttribute", handle, attr, 100_000)]


def test_shared_memory_opt_in_with_the_ctypes_binding():
    """numba's ctypes binding (no cuda.bindings): a plain pointer handle, the driver API's enum value 8, called
    in the driver library itself: the ctypes wrapper has no prototype for cuFuncSetAttribute and raises
    AttributeError for it (numba.cuda.cudadrv.drvapi.API_PROTOTYPES)."""
    calls = []

    class Lib:
        @staticmethod
        def cuFuncSetAttribute(*args):
            calls.append(("cuFuncSetAttribute", *args))
            return 0

    class Driver:                                    # numba's ctypes Driver: names outside its prototypes raise
        lib = Lib

        def __getattr__(self, name):
            raise AttributeError(name)
    drv = types.SimpleNamespace(binding=None, driver=Driver())
    numba_lstm.allow_shared(_kernel_with_handle(0xABC), 60_000, drv=drv)
    assert calls == [("cuFuncSetAttribute", 0xABC, 8, 60_000)]


def test_no_opt_in_up_to_48_kb():
    drv, calls = _fake_drv(_bindings())
    numba_lstm.allow_shared(_kernel_with_handle(object()), 48 * 1024, drv=drv)
    assert calls == []


# ---- Numba: the GPU launch path with a fake numba.cuda ---------------------------------------------
class FakeNumbaGPU:
    """Enough of numba.cuda, a compiled kernel and torch.cuda's stream for numba_lstm's GPU launch path;
    counts the work a launch does."""

    SMS, SMEM_OPTIN = 132, 227 * 1024

    def __init__(self):
        self.context = None                # the numba device context entered (cuda.gpus[i])
        self.counts = dict(compile=0, occupancy=0, opt_in=0, external_stream=0, as_cuda_array=0)
        self.launches = []
        fake = self

        class Overload:
            """As numba's: ONE per signature (so per dtype, for every H and B), its dynamic shared-memory
            limit one value per device (the driver attribute the last opt-in set); a query or launch above it
            gets 0 co-resident blocks / fails, as the occupancy calculator and the driver do."""
            shared_mem_per_block = 0

            def __init__(self):
                self.opted_in = {}                  # device -> CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

            def limit(self):
                return max(48 * 1024, self.opted_in.get(fake.context, 0))

            def max_cooperative_grid_blocks(self, threads, shared):
                fake.counts["occupancy"] += 1
                return fake.SMS if shared <= self.limit() else 0

            def launch(self, args, griddim, blockdim, stream, sharedmem):
                assert sharedmem <= self.limit(), f"launch with {sharedmem} B, opted in to {self.limit()} B"
                fake.launches.append(dict(context=fake.context, args=args, grid=griddim, block=blockdim,
                                          stream=stream, shared=sharedmem))

        class Dispatcher:
            def __init__(self):
                self.overloads = {}

            def compile(self, sig):
                fake.counts["compile"] += 1
                return self.overloads.setdefault(sig, Overload())

            def __getitem__(self, cfg):
                blocks, threads, stream, shared = cfg
                return types.SimpleNamespace(griddim=(blocks, 1, 1), blockdim=(threads, 1, 1), stream=stream,
                                             sharedmem=shared)

        self.kernels = (Dispatcher(), Dispatcher())

        class Gpus:
            def __getitem__(self, index):
                @contextlib.contextmanager
                def ctx():
                    prev, fake.context = fake.context, index
                    try:
                        yield
                    finally:
                        fake.context = prev
                return ctx()

        def external_stream(handle):
            fake.counts["external_stream"] += 1
            return ("stream", handle, fake.context)

        def as_cuda_array(t, sync=True):
            assert sync is False, "as_cuda_array(sync=True) would synchronise the stream"
            fake.counts["as_cuda_array"] += 1
            return t

        self.cuda = types.SimpleNamespace(
            gpus=Gpus(), external_stream=external_stream, as_cuda_array=as_cuda_array, is_available=lambda: True,
            get_current_device=lambda: types.SimpleNamespace(
                MULTIPROCESSOR_COUNT=fake.SMS, MAX_SHARED_MEMORY_PER_BLOCK_OPTIN=fake.SMEM_OPTIN, id=fake.context))

    def allow_shared(self, kernel, nbytes, drv=None):
        self.counts["opt_in"] += 1
        if nbytes > 48 * 1024:
            kernel.opted_in[self.context] = nbytes


@pytest.fixture
def fake_gpu(monkeypatch, current):
    fake = FakeNumbaGPU()
    monkeypatch.setattr(numba_kernels, "SIMULATOR", False)
    monkeypatch.setattr(numba_lstm, "cuda", fake.cuda)
    monkeypatch.setattr(numba_lstm, "kernels_for", lambda dtype: fake.kernels)
    monkeypatch.setattr(numba_lstm, "allow_shared", fake.allow_shared)
    monkeypatch.setattr(numba_lstm, "_LAUNCHES", {})
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device: types.SimpleNamespace(cuda_stream=7000 + device))   # an index
    fake.current = current
    return fake


def _fwd_tensors(T=3, B=2, H=256):
    return [torch.zeros(T, B, 4 * H), torch.zeros(B, H), torch.zeros(B, H), torch.zeros(4 * H, H),
            torch.full((B,), T, dtype=torch.int32), torch.zeros(T, B, H), torch.zeros(B, H), torch.zeros(B, H),
            torch.zeros(T, B, 4 * H), torch.zeros(T, B, H)]


def test_numba_launches_on_the_input_device_not_the_current_one(fake_gpu):
    fake_gpu.current.index = 0                              # cuda:0 current, the tensors on cuda:1
    tensors = _fwd_tensors()
    numba_lstm._launch("fwd", torch.float32, tensors, [False, True], 256, 2, torch.device("cuda", 1))
    (launch,) = fake_gpu.launches
    assert launch["context"] == 1                           # launched in device 1's context
    assert launch["stream"] == ("stream", 7001, 1)          # on torch's current stream OF DEVICE 1
    p = numba_lstm.plan("fwd", torch.float32, 256, 2, 1)
    args = launch["args"]
    assert all(a.data_ptr() == t.data_ptr() for a, t in zip(args, tensors)) and args[len(tensors):] == [p.ht, p.lanes, 0, 1]
    assert launch["grid"] == (p.blocks, 1, 1) and launch["shared"] == p.shared


def test_numba_bare_cuda_device_means_the_current_one(fake_gpu):
    fake_gpu.current.index = 2
    numba_lstm._launch("fwd", torch.float32, _fwd_tensors(), [False, True], 256, 2, torch.device("cuda"))
    assert fake_gpu.launches[0]["context"] == 2


def test_numba_repeated_launch_does_not_redo_compile_occupancy_or_opt_in(fake_gpu):
    dev = torch.device("cuda", 0)
    tensors = _fwd_tensors()
    numba_lstm._launch("fwd", torch.float32, tensors, [False, True], 256, 2, dev)
    first = dict(fake_gpu.counts)
    assert first["compile"] == 1 and first["occupancy"] >= 1 and first["opt_in"] >= 1
    for _ in range(5):
        numba_lstm._launch("fwd", torch.float32, tensors, [False, True], 256, 2, dev)
    after = fake_gpu.counts
    assert len(fake_gpu.launches) == 6
    for what in ("compile", "occupancy", "opt_in", "external_stream"):
        assert after[what] == first[what], f"{what} redone on a repeated launch: {first[what]} -> {after[what]}"
    assert after["as_cuda_array"] == 6 * len(tensors)       # the only per-call work: zero-copy views
    # another device or another shape is another launch configuration, worked out once too
    numba_lstm._launch("fwd", torch.float32, tensors, [False, True], 256, 2, torch.device("cuda", 1))
    assert fake_gpu.counts["compile"] == 2


def test_numba_unsupported_plans_on_the_input_device(fake_gpu):
    fake_gpu.current.index = 0
    assert numba_lstm.unsupported(device=torch.device("cuda", 1), dtype=torch.float32, hidden_size=256,
                                  batch=2) is None
    assert {k[-1] for k in numba_lstm._LAUNCHES} == {1}


def test_numba_a_smaller_plan_does_not_lower_the_opt_in_of_a_larger_one(fake_gpu):
    """numba compiles one kernel per dtype for every shape, and the shared-memory opt-in is that kernel's: fp16
    H = 1024 at B = 64 (74 KB), then a plan at B = 1 (64 KB), then B = 64 again must still launch (opting in
    to each plan's own size lowered the limit under the cached B = 64 plan: its launch failed)."""
    dev = torch.device("cuda", 0)
    H = 1024
    big = numba_lstm.plan("fwd", torch.float16, H, 64, 0)
    assert big.shared > numba_lstm.plan("fwd", torch.float16, H, 1, 0).shared > 48 * 1024
    numba_lstm._launch("fwd", torch.float16, _fwd_tensors(B=64, H=H), [False, True], H, 64, dev)
    overload = fake_gpu.kernels[0].compile(numba_lstm.signature("fwd", torch.float16))
    for key, launch in numba_lstm._LAUNCHES.items():
        with fake_gpu.cuda.gpus[key[-1]]:
            assert overload.max_cooperative_grid_blocks(256, launch.plan.shared) >= launch.plan.blocks, key
    assert len(fake_gpu.launches) == 1


def test_numba_unsupported_does_not_probe_the_driver_while_torch_compile_traces(fake_gpu, monkeypatch):
    """Dynamo cannot trace numba's driver probes (cuda.is_available ends in a Cython call): while it traces,
    ``unsupported`` answers without them; the op plans again when it runs."""
    def untraceable():
        raise AssertionError("numba's driver probed while torch.compile traces")
    monkeypatch.setattr(fake_gpu.cuda, "is_available", untraceable)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert numba_lstm.unsupported(device=torch.device("cuda", 0), dtype=torch.float32, hidden_size=256, batch=2) is None
    assert numba_lstm._LAUNCHES == {}
