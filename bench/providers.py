"""One setup function per provider, shared by the gate, the speed run and the memory run.

A setup function takes the case (shape, dtype) and the shared fp32 weights (nn.LSTM's names) and returns
a ``Prepared``: a callable ``forward(x [T,B,I]) -> y, (h_n, c_n)`` that is the FULL LSTM layer call
(input projection included, on every side) and the provider's own parameter tensors under nn.LSTM's
names, so gradients can be checked. It raises ``Unsupported`` (or the backend's NotImplementedError /
ValueError) when the provider cannot run the case; the sweep records that as "unsupported".

    reference  lstm_gpu.LSTM(backend="reference"): the plain PyTorch recurrence (CPU runs; slow on GPU)
    cudnn      torch.nn.LSTM: cuDNN on a GPU, ATen's native LSTM on CPU (``label``: "torch (ATen CPU)")
    triton     lstm_gpu.LSTM(backend="triton"); Triton interpreter on CPU
    numba      lstm_gpu.LSTM(backend="numba"); Numba CUDA simulator on CPU
    eager      an nn.LSTMCell per layer and direction, looped over time in Python
    compiled   the same loop with each nn.LSTMCell step under torch.compile (the loop itself stays in
               Python: compiling the whole loop unrolls all T steps, and compile time grows with T)
    flashrnn   NX-AI's FlashRNN fused CUDA kernel (cuda_fused), only when ``import flashrnn`` works; its
               input projection is done by F.linear here so it is timed as on every other side

Tests may ``register`` extra providers (e.g. a deliberately wrong one to exercise the gate).
"""
from __future__ import annotations

import contextlib

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = {"fp32-ieee": torch.float32, "fp32-tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")


class Unsupported(Exception):
    """This provider cannot run this case; the message says why."""


@dataclass(frozen=True)
class Shape:
    batch: int
    hidden: int
    seq_len: int
    layers: int = 1
    bidirectional: bool = False
    input_size: int = 0          # 0: same as hidden

    @property
    def input(self) -> int:
        return self.input_size or self.hidden

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


@dataclass
class Prepared:
    forward: Callable[[Tensor], tuple[Tensor, tuple[Tensor, Tensor]]]
    params: dict[str, Tensor]    # nn.LSTM parameter names -> this provider's tensors
    note: str = ""
    around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext   # wraps forward AND backward


Setup = Callable[[Shape, torch.dtype, dict, torch.device], Prepared]


def shared_weights(shape: Shape, seed: int = 0) -> dict[str, Tensor]:
    """nn.LSTM's default init, seeded per shape, on CPU in fp32: every provider starts from these."""
    with torch.random.fork_rng(devices=[]):      # CPU generator only: same weights on every machine
        torch.manual_seed(seed)
        m = nn.LSTM(shape.input, shape.hidden, num_layers=shape.layers, bidirectional=shape.bidirectional)
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _loaded(module: nn.Module, weights: dict, dtype: torch.dtype, device: torch.device) -> nn.Module:
    module.to(device=device, dtype=dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
    return module


# ---- providers ---------------------------------------------------------------------------------
def setup_cudnn(shape: Shape, dtype, weights, device) -> Prepared:
    m = _loaded(nn.LSTM(shape.input, shape.hidden, num_layers=shape.layers,
                        bidirectional=shape.bidirectional), weights, dtype, device)
    m.flatten_parameters()
    note = "torch.nn.LSTM (cuDNN)" if device.type == "cuda" else "torch.nn.LSTM on CPU (ATen, not cuDNN)"
    return Prepared(m, dict(m.named_parameters()), note)


def _lstm_gpu_setup(backend: str, **module_kw) -> Setup:
    def setup(shape: Shape, dtype, weights, device) -> Prepared:
        import lstm_gpu
        # raises NotImplementedError (backend not written yet) or ValueError (cannot run this call)
        lstm_gpu.select_backend(backend, device=device, dtype=dtype, hidden_size=shape.hidden, batch=shape.batch)
        m = _loaded(lstm_gpu.LSTM(shape.input, shape.hidden, num_layers=shape.layers,
                                  bidirectional=shape.bidirectional, backend=backend, **module_kw), weights, dtype,
                    device)
        kw = "".join(f", {k}={v!r}" for k, v in module_kw.items())
        return Prepared(m, dict(m.named_parameters()), f"lstm_gpu.LSTM(backend={backend!r}{kw})")
    setup.__name__ = f"setup_{backend}"
    return setup


class CellLoop(nn.Module):
    """nn.LSTM's computation written as nn.LSTMCell steps in a Python loop (eager / compiled baselines)."""

    def __init__(self, shape: Shape, compile_step: bool = False):
        super().__init__()
        self.shape = shape
        self.cells = nn.ModuleDict()
        for layer in range(shape.layers):
            in_size = shape.input if layer == 0 else shape.hidden * shape.directions
            for d in range(shape.directions):
                self.cells[self._suffix(layer, d)] = nn.LSTMCell(in_size, shape.hidden)
        self.steps = {k: (torch.compile(c, dynamic=False) if compile_step else c) for k, c in self.cells.items()}

    @staticmethod
    def _suffix(layer: int, d: int) -> str:
        return f"l{layer}" + ("_reverse" if d else "")

    def lstm_named_parameters(self) -> dict[str, Tensor]:
        return {f"{name}_{k}": getattr(cell, name) for k, cell in self.cells.items()
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def load_lstm_weights(self, weights: dict) -> None:
        params = self.lstm_named_parameters()
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(v)

    def forward(self, x: Tensor):
        T, B, _ = x.shape
        H, D = self.shape.hidden, self.shape.directions
        h_n, c_n, inp = [], [], x
        for layer in range(self.shape.layers):
            outs = []
            for d in range(D):
                step = self.steps[self._suffix(layer, d)]
                h = c = x.new_zeros(B, H)
                ys: list = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    h, c = step(inp[t], (h, c))
                    ys[t] = h
                outs.append(torch.stack(ys))
                h_n.append(h)
                c_n.append(c)
            inp = outs[0] if D == 1 else torch.cat(outs, -1)
        return inp, (torch.stack(h_n), torch.stack(c_n))


def _cell_loop_setup(compile_step: bool) -> Setup:
    def setup(shape: Shape, dtype, weights, device) -> Prepared:
        m = CellLoop(shape, compile_step).to(device=device, dtype=dtype)
        m.load_lstm_weights({k: v.to(dtype) for k, v in weights.items()})
        note = ("nn.LSTMCell loop, each step torch.compile'd (dynamic=False)" if compile_step
                else "nn.LSTMCell loop (eager)")
        return Prepared(m, m.lstm_named_parameters(), note)
    setup.__name__ = "setup_compiled" if compile_step else "setup_eager"
    return setup


def flashrnn_available() -> bool:
    return importlib.util.find_spec("flashrnn") is not None


def setup_flashrnn(shape: Shape, dtype, weights, device) -> Prepared:
    """FlashRNN's fused kernel. Its layout is wired from its source (gate order i, f, z, o = PyTorch's;
    Wx "BTGHD", R "GHDP", bias "GHD") and has never been run here: the gate decides whether it is right."""
    if device.type != "cuda":
        raise Unsupported("flashrnn needs a CUDA GPU")
    if not flashrnn_available():
        raise Unsupported("flashrnn is not importable")
    if shape.layers != 1 or shape.bidirectional:
        raise Unsupported("flashrnn is wired up for 1 layer, unidirectional only")
    from flashrnn import flashrnn
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    p = {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in weights.items()}
    B, H = shape.batch, shape.hidden

    def forward(x: Tensor):
        T = x.shape[0]
        gx = F.linear(x, p["weight_ih_l0"], p["bias_ih_l0"] + p["bias_hh_l0"])        # input GEMM, [T,B,4H]
        wx = gx.transpose(0, 1).reshape(B, T, 4, 1, H)
        r = p["weight_hh_l0"].reshape(4, 1, H, H)
        b = gx.new_zeros(4, 1, H)                                                     # bias already in gx
        states, last = flashrnn(wx, r, b, function="lstm", backend="cuda_fused", dtype=names[dtype])
        y = states[0].reshape(B, T, H).transpose(0, 1)
        return y, (last[0].reshape(1, B, H), last[1].reshape(1, B, H))

    return Prepared(forward, p, "flashrnn cuda_fused (layout unverified on GPU; gated)")


def _triton_switched(switch: str, value: bool, refusal: str, note: str) -> Setup:
    """The triton backend with the config switch ``triton_config.<switch>`` set to ``value`` around each call
    (and back after it): a variant the first GPU measurement decides on. 16-bit only (else ``refusal``)."""
    def setup(shape: Shape, dtype, weights, device) -> Prepared:
        from lstm_gpu.kernels import triton_config
        if dtype not in (torch.float16, torch.bfloat16):
            raise Unsupported(refusal)
        prep = _lstm_gpu_setup("triton")(shape, dtype, weights, device)

        @contextlib.contextmanager
        def around():       # the backward's config is chosen when autograd runs it: the switch covers both
            saved = getattr(triton_config, switch)
            setattr(triton_config, switch, value)
            try:
                yield
            finally:
                setattr(triton_config, switch, saved)
        return Prepared(prep.forward, prep.params, f"lstm_gpu.LSTM(backend='triton'), {note}", around)
    return setup


# The forward's h and the backward's dz exchange forced one way or the other (``triton_config.POLLED_H``): polled,
# write-once slots (no step counter; the configs' choice where a batch group is one 16-row tile, modeled B16 H768
# fp16 forward 1.17 vs 1.78 µs/step through the counter, backward 3.08 vs 3.47) or the step counter (their choice
# elsewhere). "triton-counter" times the counter where the configs poll: the measurement of the fence and round
# trips the model assumes.
setup_triton_polled = _triton_switched("POLLED_H", True, "the polled h exchange carries 16-bit h only",
                                       "h / dz exchange polled")
setup_triton_counter = _triton_switched("POLLED_H", False, "the h exchange variants are measured at 16 bits only",
                                        "h / dz exchange through the step counter")
# The forward's tensor-core product per gate (``triton_config.FUSED_GATES`` off): the path the fused dot replaced,
# modeled slower (B16 H768 fp16 forward 2.19 vs 1.78 µs/step).
setup_triton_per_gate = _triton_switched("FUSED_GATES", False,
                                         "the per-gate tensor-core forward is measured at 16 bits only",
                                         "forward tl.dot per gate")
# The forward's fused product in rows where the configs transpose it (``triton_config.TRANSPOSED_GATES`` off):
# mma.sync instead of a warpgroup MMA, modeled slower by the shared memory it re-reads (B64 H1024 bf16 forward
# 5.60 vs 4.21 µs/step): the measurement checks the model's shared-memory floor.
setup_triton_rows = _triton_switched("TRANSPOSED_GATES", False, "the fused forward in rows is measured at 16 bits only",
                                     "forward fused gates in rows")
# The forward without K folded into M where the configs fold it (``triton_config.FOLDED_GATES`` off): W_hh in shared
# memory, read back by every MMA of every step, instead of in registers; modeled slower (B16 H768 fp16 forward 2.01 vs
# 1.28 µs/step): the measurement checks the fold, the model's shared-memory floor and the instructions it saves.
setup_triton_unfolded = _triton_switched("FOLDED_GATES", False, "the unfolded forward is measured at 16 bits only",
                                         "forward not folded (W_hh in shared memory)")


def _stack_switched(values: dict, note: str) -> Setup:
    """The one-launch stack (``stack=True``: raises where it does not fit) with kernels/triton_stack.py's switches set
    to ``values`` around each call, forward and the backward autograd runs in it."""
    def setup(shape: Shape, dtype, weights, device) -> Prepared:
        from lstm_gpu.kernels import triton_stack
        prep = _lstm_gpu_setup("triton", stack=True)(shape, dtype, weights, device)

        @contextlib.contextmanager
        def around():
            saved = {k: getattr(triton_stack, k) for k in values}
            for k, v in values.items():
                setattr(triton_stack, k, v)
            try:
                yield
            finally:
                for k, v in saved.items():
                    setattr(triton_stack, k, v)
        return Prepared(prep.forward, prep.params, f"lstm_gpu.LSTM(backend='triton', stack=True), {note}", around)
    return setup


# The stack's exchanges through its epoch counters instead of polled (kernels/triton_stack.py's POLLED_FORWARD,
# POLLED_BACKWARD): the single layer measured its polled backward 3 µs a step slower than the counter (H200, B16
# H768 fp16); whether the stack's is, this decides.
setup_triton_stack_counters = _stack_switched({"POLLED_FORWARD": False, "POLLED_BACKWARD": False},
                                              "exchanges through the epoch counters")


PROVIDERS: dict[str, Setup] = {
    "reference": _lstm_gpu_setup("reference"),
    "cudnn": setup_cudnn,
    "triton": _lstm_gpu_setup("triton"),
    "triton-layers": _lstm_gpu_setup("triton", stack=False),    # one launch per layer and direction
    "triton-stack-counters": setup_triton_stack_counters,
    "triton-polled": setup_triton_polled,
    "triton-counter": setup_triton_counter,
    "triton-per-gate": setup_triton_per_gate,
    "triton-rows": setup_triton_rows,
    "triton-unfolded": setup_triton_unfolded,
    "numba": _lstm_gpu_setup("numba"),
    "eager": _cell_loop_setup(False),
    "compiled": _cell_loop_setup(True),
    "flashrnn": setup_flashrnn,
}


def label(provider: str, device_kind: str) -> str:
    """What plots and reports call a provider: "cudnn" is torch's own LSTM, which is cuDNN only on a GPU."""
    if provider == "cudnn":
        return "cuDNN" if device_kind == "cuda" else "torch (ATen CPU)"
    return provider


def register(name: str, setup: Setup) -> None:
    PROVIDERS[name] = setup


def default_providers(gpu: bool) -> list[str]:
    if gpu:
        return ["triton", "numba", "cudnn", "eager", "compiled"] + (["flashrnn"] if flashrnn_available() else [])
    return ["reference", "cudnn", "eager", "triton", "numba"]


# ---- running a prepared provider ---------------------------------------------------------------
def outputs(prep: Prepared, x: Tensor, dy: Tensor, mode: str) -> dict[str, Tensor]:
    """Everything the gate compares: y, h_n, c_n, and for fwd+bwd the gradients of x and every parameter."""
    if mode == "fwd":
        with torch.no_grad(), prep.around():
            y, (h, c) = prep.forward(x)
        return {"y": y, "h_n": h, "c_n": c}
    xg = x.detach().clone().requires_grad_()
    for t in prep.params.values():
        t.grad = None
    with prep.around():
        y, (h, c) = prep.forward(xg)
        torch.autograd.backward(y, dy)
    out = {"y": y.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad_x": xg.grad}
    out.update({f"grad_{k}": t.grad for k, t in prep.params.items()})
    return out


def timed_call(prep: Prepared, x: Tensor, dy: Tensor, mode: str) -> tuple[Callable[[], object], list[Tensor]]:
    """The call the speed and memory runs time, and the tensors whose .grad is reset before each call."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad(), prep.around():
                return prep.forward(x)
        return fwd, []
    xg = x.detach().clone().requires_grad_()

    def fwd_bwd():
        with prep.around():
            y, _ = prep.forward(xg)
            torch.autograd.backward(y, dy)
    return fwd_bwd, [xg, *prep.params.values()]


def oracle(shape: Shape, dtype: torch.dtype, weights: dict, x: Tensor, dy: Tensor) -> dict[str, Tensor]:
    """The reference recurrence on the provider's dtype-rounded weights and input, upcast, IEEE, with grads."""
    import lstm_gpu
    from .env import restore_fp32_precision, save_fp32_precision, set_fp32_precision
    odt = torch.float64 if x.device.type == "cpu" else torch.float32
    rounded = {k: v.to(dtype).to(odt) for k, v in weights.items()}
    m = _loaded(lstm_gpu.LSTM(shape.input, shape.hidden, num_layers=shape.layers,
                              bidirectional=shape.bidirectional, backend="reference"), rounded, odt, x.device)
    saved = save_fp32_precision()
    set_fp32_precision("ieee")
    try:
        return outputs(Prepared(m, dict(m.named_parameters())), x.to(odt), dy.to(odt), "fwd+bwd")
    finally:
        restore_fp32_precision(saved)
