"""Backend "numba": the launcher for the persistent fused Numba-CUDA LSTM (kernels in numba_kernels.py).

STATUS: run on one GPU (an H200, 2026-11-28, numba-cuda 0.30.4): the smoke grid (fp16 / fp32, H 256-1024,
B 1-64, packed, bidirectional, a projection) matched the reference; slow (112 µs/step at B16 H768 fp16). The
simulator configuration (one block) is tested on CPU (tests/test_numba_cpu.py); tests/test_numba_gpu.py has
not run yet. What a CPU can show has been shown:
the kernels compile for sm_90 with real Numba-CUDA typing and ptxas, with no spills
(tests/test_numba_cpu.py::test_kernels_compile_for_sm90_without_spills, needs libnvrtc + ptxas).

The backend contract is lstm_gpu/reference.py's, tensor for tensor:

    unsupported(*, device, dtype, hidden_size, batch) -> str | None
    forward(gates_x, h0, c0, w_hh, w_hr, lengths, reverse, save) -> y, h_n, c_n, gates, cells
    backward(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr, lengths, reverse)
        -> dgates, dh0, dc0, None        (dW_hh is one GEMM done by the caller; no projection)

Configuration rules (``plan``):
- Simulator (NUMBA_ENABLE_CUDASIM=1, CPU tensors): ONE block of SIM_THREADS threads owning all H units.
  The simulator runs blocks one after another and its grid.sync only syncs a block, so two blocks
  would be silently wrong.
- GPU: NT = 256 threads per block. A block owns HT units (4·HT rows of W_hh forward, HT columns
  backward, staged in shared memory once). HT is the smallest value, starting at ceil(H / #SMs), for
  which the ceil(H / HT) blocks fit in ``max_cooperative_grid_blocks(NT, shared bytes)``; the grid is never
  larger than that (and never larger than the SM count). If the slice outgrows the per-block
  shared-memory opt-in limit first, the call is unsupported and the reason names the limit.
- LANES (threads per dot product) = min(32, next power of two ≥ the dot length): H forward, 4H backward
  (simulator: SIM_LANES, 1 by default).
- Simulator launches lower Python's thread switch interval for their duration (restored afterwards).
- grid.sync() runs every step even with one block (the simulator's, or a tiny H): the simulator
  implements it as a block barrier, and a 1-block cooperative grid is legal on a GPU.
- Host work: everything about a (kind, dtype, H, B, device) launch that does not change is worked out once
  (``gpu_launch``: the compile lookup, the grid's occupancy queries, the >48 KB shared-memory opt-in on
  either handle kind numba hands out, a launch configuration per stream); a call then makes the zero-copy
  views and launches the compiled overload directly, without the dispatcher typing its arguments again
  (tests/test_launch_host.py counts this with a fake numba.cuda). It launches in the context of the
  INPUT's device (a bare "cuda" means torch's current device), on torch's current stream of that device.
- Indexing is Numba's intp (64-bit) arithmetic, so T·B·4H past 2^31 elements is fine by construction
  (tests/test_reliability_gpu.py::test_offsets_past_2_pow_31 checks it on a GPU).
"""
from __future__ import annotations

import ctypes
import math
import sys
import warnings

import numpy as np
import torch
from numba import cuda
from numba.core.errors import NumbaPerformanceWarning

from . import numba_kernels
from .host import common_unsupported, device_index, lengths_or_full
from .numba_kernels import bwd_shared_bytes, fwd_shared_bytes

SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.float64)
BF16_REASON = ("dtype torch.bfloat16 is not supported by the numba backend: Numba-CUDA arrays have no "
               "bfloat16 type through __cuda_array_interface__, and the int16-view workaround is not "
               "implemented; use float16, float32 or float64, or backend='triton'/'cudnn'")
THREADS = 256                 # GPU block size (a multiple of 32)
SIM_THREADS = 32              # simulator block size: one warp (each simulated thread is a Python thread)
SIM_LANES = 1                 # simulator: one thread per dot product, so no emulated shuffles (each one
                              # costs two block barriers there); tests set 8 or 32 to cover the shuffle tree
SIM_SWITCH_INTERVAL = 1e-4    # seconds; the simulator's barriers are ~10x faster than at Python's 5 ms
DEFAULT_SMEM = 48 * 1024      # dynamic shared memory allowed without the opt-in

_NP_DTYPE = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_KERNELS: dict = {}


def kernels_for(dtype: torch.dtype):
    """(forward, backward) kernels for ``dtype``, built on first use."""
    if dtype not in _KERNELS:
        _KERNELS[dtype] = numba_kernels.make_kernels(_NP_DTYPE[dtype])
    return _KERNELS[dtype]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lanes_for(length: int) -> int:
    """Threads per dot product: the next power of two ≥ ``length``, at most a warp."""
    return min(32, 1 << max(0, math.ceil(math.log2(max(1, length)))))


# ---------------------------------------------------------------------------------------------------
# Grid planning
# ---------------------------------------------------------------------------------------------------
class Plan:
    """One launch configuration: ``blocks`` blocks of ``threads`` threads, each owning ``ht`` units."""

    def __init__(self, blocks: int, threads: int, ht: int, lanes: int, shared: int):
        self.blocks, self.threads, self.ht, self.lanes, self.shared = blocks, threads, ht, lanes, shared

    def __repr__(self):
        return (f"Plan(blocks={self.blocks}, threads={self.threads}, ht={self.ht}, lanes={self.lanes}, "
                f"shared={self.shared})")


def _array_type(np_dtype, ndim: int):
    import numba
    return numba.types.Array(numba.from_dtype(np.dtype(np_dtype)), ndim, "C")


def signature(kind: str, dtype: torch.dtype):
    """The argument types the kernels are compiled for (contiguous arrays, int64 scalars)."""
    from numba import types
    s, a = _NP_DTYPE[dtype], (np.float64 if dtype == torch.float64 else np.float32)
    i32 = _array_type(np.int32, 1)
    if kind == "fwd":
        arrays = [(s, 3), (s, 2), (s, 2), (s, 2)]
        return tuple([_array_type(d, n) for d, n in arrays] + [i32]
                     + [_array_type(d, n) for d, n in [(s, 3), (s, 2), (s, 2), (a, 3), (a, 3)]]
                     + [types.int64] * 4)
    arrays = [(s, 3), (s, 2), (s, 2), (a, 3), (a, 3), (s, 2), (s, 2)]
    return tuple([_array_type(d, n) for d, n in arrays] + [i32]
                 + [_array_type(d, n) for d, n in [(a, 3), (a, 2), (a, 2)]] + [types.int64] * 3)


def compiled(kind: str, dtype: torch.dtype):
    """The compiled kernel object (GPU only): registers, local/shared memory, co-residency."""
    fwd, bwd = kernels_for(dtype)
    kernel = fwd if kind == "fwd" else bwd
    return kernel.compile(signature(kind, dtype))


MAX_DYNAMIC_SHARED_ATTR = 8   # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES in the CUDA driver API


def allow_shared(kernel, nbytes: int, drv=None) -> None:
    """Opt the compiled kernel in to ``nbytes`` of dynamic shared memory (needed above 48 KB).

    numba-cuda has no API for CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, so this calls the driver as
    numba's own ``set_shared_memory_carveout`` does, on whichever handle this numba-cuda hands out: a
    CUkernel (numba-cuda >= 0.24 loads modules as libraries: ``cuKernelSetAttribute`` per device) or a
    CUfunction (older versions: ``cuFuncSetAttribute``; with numba's ctypes binding, whose wrapper has no
    prototype for it and raises AttributeError, straight from the driver library). Calling the wrong one
    fails every plan above 48 KB. ``drv``: numba's driver module (tests pass a fake). Unverified on a GPU.
    The attribute is the compiled kernel's, one value per device for every plan: ``gpu_launch`` sets it once.
    """
    if nbytes <= DEFAULT_SMEM:
        return
    if drv is None:
        from numba.cuda.cudadrv import driver as drv
    cufunc = kernel._codelibrary.get_cufunc()
    handle = cufunc.handle
    binding = getattr(drv, "binding", None)
    attr = MAX_DYNAMIC_SHARED_ATTR
    if binding is not None and hasattr(binding, "CUfunction_attribute"):
        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    kernel_type = getattr(binding, "CUkernel", None)
    if kernel_type is not None and isinstance(handle, kernel_type):
        drv.driver.cuKernelSetAttribute(attr, int(nbytes), handle, cufunc.device.id)
    elif binding is not None:
        drv.driver.cuFuncSetAttribute(handle, attr, int(nbytes))
    else:
        fn = drv.driver.lib.cuFuncSetAttribute
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int
        rc = fn(handle, attr, int(nbytes))
        if rc != 0:
            raise RuntimeError(f"cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {nbytes}) failed: CUresult {rc}")


def _shared_bytes(kind, dtype, H, B, ht):
    fn = fwd_shared_bytes if kind == "fwd" else bwd_shared_bytes
    return fn(_NP_DTYPE[dtype], H, B, ht)


def choose_grid(kind: str, dtype: torch.dtype, H: int, B: int, *, sms: int, smem_limit: int,
                static_smem: int, co_resident) -> Plan | str:
    """The grid rule, free of any device: ``co_resident(shared_bytes)`` says how many blocks of THREADS
    threads with that much dynamic shared memory can be co-resident (max_cooperative_grid_blocks).

    HT goes up from ceil(H / sms) (so never more blocks than SMs); the first HT whose ceil(H / HT)
    blocks are all co-resident wins. Returns a Plan, or the reason no grid fits.
    """
    lanes = lanes_for(H if kind == "fwd" else 4 * H)
    start = max(1, -(-H // sms))
    for ht in range(start, H + 1):
        blocks = -(-H // ht)
        if ht > start and -(-H // (ht - 1)) == blocks:
            continue                 # the same grid was tried with a smaller slice (less shared memory)
        shared = _shared_bytes(kind, dtype, H, B, ht)
        if shared + static_smem > smem_limit:
            return (f"H={H}, batch={B}, {dtype}: the numba {kind} kernel would need {ht} hidden units per "
                    f"block ({shared + static_smem} bytes of shared memory: W_hh slice + state) to fit "
                    f"{blocks} co-resident blocks, over this GPU's per-block limit of {smem_limit} bytes "
                    f"({sms} SMs): the W_hh slices and state do not fit on chip")
        if blocks <= min(co_resident(shared), sms):
            return Plan(blocks, THREADS, ht, lanes, shared)
    return f"H={H}, batch={B}, {dtype}: no grid of co-resident blocks found for the numba {kind} kernel"


class GpuLaunch:
    """Everything about one (kind, dtype, H, B, device) launch that does not change from call to call,
    worked out once: the compiled overload (no typing or compile lookup per call), the grid (the occupancy
    queries), the shared-memory opt-in (one driver call), and a launch configuration per stream.

    Calling it launches the overload directly on torch's current stream of the input's device.
    """

    MAX_STREAMS = 64                  # launch configurations kept (one per stream seen)

    def __init__(self, kernel, overload, plan: Plan, index: int):
        self.kernel, self.overload, self.plan, self.index = kernel, overload, plan, index
        self.configs: dict = {}

    def config(self, stream_handle: int):
        """The kernel's launch configuration on this stream (as ``kernel[grid, block, stream, shm]``)."""
        lc = self.configs.get(stream_handle)
        if lc is None:
            if len(self.configs) >= self.MAX_STREAMS:
                self.configs.clear()
            p = self.plan
            with warnings.catch_warnings():     # "grid size N will likely result in GPU under-utilization"
                warnings.simplefilter("ignore", NumbaPerformanceWarning)   # (below 128 blocks): sized so on purpose
                lc = self.kernel[p.blocks, p.threads, cuda.external_stream(stream_handle), p.shared]
            self.configs[stream_handle] = lc
        return lc

    def __call__(self, tensors, scalars) -> None:
        with cuda.gpus[self.index]:
            lc = self.config(torch.cuda.current_stream(self.index).cuda_stream)
            # Zero-copy views; sync=False: we launch on torch's current stream, so the order is already
            # right, and a stream synchronize here would stall the host (and break CUDA graph capture).
            arrays = [cuda.as_cuda_array(t.detach(), sync=False) for t in tensors]
            # What the dispatcher's call would do after typing the arguments, minus the typing: the
            # overload was compiled for exactly these types (contiguous arrays, int64 scalars).
            self.overload.launch(arrays + scalars, lc.griddim, lc.blockdim, lc.stream, lc.sharedmem)


_LAUNCHES: dict = {}


def gpu_launch(kind: str, dtype: torch.dtype, H: int, B: int, index: int) -> GpuLaunch | str:
    """The cached launch for one direction of the recurrence on GPU ``index``, or why none fits."""
    key = (kind, dtype, H, B, index)
    launch = _LAUNCHES.get(key)
    if launch is None:
        with cuda.gpus[index]:
            dev = cuda.get_current_device()
            fwd, bwd = kernels_for(dtype)
            kernel = fwd if kind == "fwd" else bwd
            overload = kernel.compile(signature(kind, dtype))
            # The opt-in before any occupancy query (which counts 0 blocks above it), to the most this GPU
            # allows: numba compiles ONE overload per dtype for every H and B, and the attribute is that
            # kernel's, so setting each plan's own size would lower the limit under a larger plan cached
            # before, whose next launch then fails (B=64, then B=1, then B=64 again)
            allow_shared(overload, dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN - overload.shared_mem_per_block)
            p = choose_grid(kind, dtype, H, B, sms=dev.MULTIPROCESSOR_COUNT,
                            smem_limit=dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                            static_smem=overload.shared_mem_per_block,
                            co_resident=lambda shared: overload.max_cooperative_grid_blocks(THREADS, shared))
            if isinstance(p, Plan):
                launch = GpuLaunch(kernel, overload, p, index)
            else:
                launch = p
        _LAUNCHES[key] = launch
    return launch


def plan(kind: str, dtype: torch.dtype, H: int, B: int, device_index: int | None = None) -> Plan | str:
    """The launch configuration for one direction of the recurrence, or a string saying why none fits."""
    if numba_kernels.SIMULATOR:
        return Plan(1, SIM_THREADS, H, SIM_LANES, _shared_bytes(kind, dtype, H, B, H))
    index = device_index if device_index is not None else torch.cuda.current_device()
    launch = gpu_launch(kind, dtype, H, B, index)
    return launch if isinstance(launch, str) else launch.plan


# ---------------------------------------------------------------------------------------------------
# The backend contract
# ---------------------------------------------------------------------------------------------------
def unsupported(*, device: torch.device, dtype: torch.dtype, hidden_size: int, batch: int) -> str | None:
    if dtype == torch.bfloat16:
        reason = common_unsupported("numba", device=device, dtype=torch.float32, dtypes=SUPPORTED_DTYPES)
        return reason or BF16_REASON
    reason = common_unsupported("numba", device=device, dtype=dtype, dtypes=SUPPORTED_DTYPES)
    if reason is not None:
        return reason
    if device.type == "cuda":
        if numba_kernels.SIMULATOR:
            return ("NUMBA_ENABLE_CUDASIM=1 is set, so numba runs its CPU simulator: CUDA tensors "
                    "cannot be used; unset it, or use CPU tensors")
        if torch.compiler.is_compiling():
            # Dynamo cannot trace numba's driver probes (cuda.is_available ends in a Cython call) nor a
            # compile; the op plans again when it runs and raises the same reasons there
            return None
        if not cuda.is_available():
            return "numba-cuda finds no usable CUDA driver/GPU"
        for kind in ("fwd", "bwd"):
            p = plan(kind, dtype, hidden_size, max(1, batch), device_index(device))
            if isinstance(p, str):
                return p
    return None


def _launch(kind, dtype, tensors, scalars, H, B, device):
    """Run one kernel over torch tensors: zero-copy on GPU, host numpy views in the simulator."""
    scalars = [int(v) for v in scalars]
    if not numba_kernels.SIMULATOR:
        launch = gpu_launch(kind, dtype, H, B, device_index(device))   # the input's GPU, not the current one
        if isinstance(launch, str):
            raise ValueError(f"backend='numba' cannot run this call: {launch}")
        launch(tensors, [launch.plan.ht, launch.plan.lanes] + scalars)
        return
    p = plan(kind, dtype, H, B)
    fwd, bwd = kernels_for(dtype)
    kernel = fwd if kind == "fwd" else bwd
    arrays = [t.detach().numpy() for t in tensors]   # shares memory: the simulator writes back
    old = sys.getswitchinterval()                     # a simulated thread per CUDA thread: switch
    sys.setswitchinterval(min(old, SIM_SWITCH_INTERVAL))   # often, so barriers do not wait 5 ms
    try:
        shared = -(-p.shared // 8) * 8 + numba_kernels.sim_scratch_bytes(p.threads)
        kernel[p.blocks, p.threads, 0, shared](*arrays, p.ht, p.lanes, *scalars)
    finally:
        sys.setswitchinterval(old)


def forward(gates_x, h0, c0, w_hh, w_hr=None, lengths=None, reverse=False, save=True):
    if w_hr is not None:
        raise ValueError("the numba kernels take no W_hr: lstm_gpu.functional folds a projection into W_hh")
    T, B, G = gates_x.shape
    H = G // 4
    dt, acc = gates_x.dtype, acc_dtype(gates_x.dtype)
    lens = lengths_or_full(lengths, T, B, gates_x.device)
    y = torch.empty(T, B, H, dtype=dt, device=gates_x.device)
    h_n = torch.empty(B, H, dtype=dt, device=gates_x.device)
    c_n = torch.empty(B, H, dtype=dt, device=gates_x.device)
    shape_g, shape_c = ((T, B, G), (T, B, H)) if save else ((1, 1, 1), (1, 1, 1))
    gates = torch.empty(shape_g, dtype=acc, device=gates_x.device)
    cells = torch.empty(shape_c, dtype=acc, device=gates_x.device)
    _launch("fwd", dt, [gates_x, h0, c0, w_hh, lens, y, h_n, c_n, gates, cells],
            [reverse, save], H, B, gates_x.device)
    if not save:
        gates = cells = None
    return y, h_n, c_n, gates, cells


def backward(dy, dh_n, dc_n, gates, cells, h0, c0, y, w_hh, w_hr=None, lengths=None, reverse=False):
    if w_hr is not None:
        raise ValueError("the numba kernels take no W_hr: lstm_gpu.functional folds a projection into W_hh")
    T, B, G = gates.shape
    H = G // 4
    dt, acc = y.dtype, gates.dtype
    dev = gates.device
    lens = lengths_or_full(lengths, T, B, dev)
    dgates = torch.empty(T, B, G, dtype=acc, device=dev)
    dh0 = torch.empty(B, H, dtype=acc, device=dev)
    dc0 = torch.empty(B, H, dtype=acc, device=dev)
    tensors = [dy.contiguous().to(dt), dh_n.contiguous().to(dt), dc_n.contiguous().to(dt),
               gates.contiguous(), cells.contiguous(), c0.contiguous().to(dt), w_hh.contiguous().to(dt),
               lens, dgates, dh0, dc0]
    _launch("bwd", dt, tensors, [reverse], H, B, dev)
    return dgates, dh0, dc0, None
