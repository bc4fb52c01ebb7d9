"""``lstm_gpu.LSTM``: a drop-in replacement for ``torch.nn.LSTM``, ``convert`` to swap it in, ``to_torch`` back.

Built on ``nn.RNNBase`` (mode "LSTM"), so parameters, their names, init and state_dict are exactly
nn.LSTM's, and so is the repr but for its name and backend: ``lstm_gpu.LSTM(10, 20, backend='auto')``.
Not a subclass of nn.LSTM: torch.compile's Dynamo refuses every nn.LSTM/GRU/RNN instance, and a model
using this module must compile with ``fullgraph=True``.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import checks, ops
from .backends import check_backend_name, select_backend
from .dispatch import Choice
from .functional import layer
from .stack import stack as run_stack
from .stack import unsupported as stack_unsupported


class LSTM(nn.RNNBase):
    """Multi-layer LSTM with the arguments, parameters and outputs of ``torch.nn.LSTM``.

    Args: as torch.nn.LSTM (input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None), plus keyword-only
    ``backend``: "auto" (default), "reference", "cudnn", "triton" or "numba". ``backend_for(input)``
    tells which backend a call will use. With "triton", ``stack`` decides how the layers run: "auto" (default)
    all layers and directions in one kernel launch per pass whenever the whole stack fits on the chip
    (lstm_gpu/stack.py) and has more than one layer or direction, else one launch per layer and direction; True: the one launch or a ValueError saying
    why it cannot; False: always per layer. ``backend_for(input, explain=True)`` says which.

    Example:
        >>> import torch, lstm_gpu
        >>> rnn = lstm_gpu.LSTM(10, 20, num_layers=2)
        >>> output, (h_n, c_n) = rnn(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(self, *args, backend: str = "auto", stack: bool | str = "auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        check_backend_name(backend)
        if not (isinstance(stack, bool) or stack == "auto"):     # not 0 / 1: the module tests `is True`
            raise ValueError(f"stack must be 'auto', True or False, got {stack!r}")
        self.backend = backend
        self.stack = stack

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}" + (
            "" if self.stack == "auto" else f", stack={self.stack!r}")

    def __repr__(self) -> str:
        # "lstm_gpu.LSTM(10, 20, backend='auto')": print(model) shows that convert() swapped it in.
        # Not via _get_name(): torch.fx uses that as an identifier.
        return "lstm_gpu." + super().__repr__()

    def __prepare_scriptable__(self) -> nn.LSTM:
        """``torch.jit.script``: TorchScript cannot compile this module's Python dispatch (nor run the kernels), so
        scripting it (alone or inside a model) scripts the ``nn.LSTM`` sharing its parameters: torch's own LSTM,
        cuDNN on CUDA and ATen on the CPU, what ``backend="cudnn"`` runs."""
        if self.backend not in ("auto", "cudnn"):
            warnings.warn(f"torch.jit.script of lstm_gpu.LSTM(backend={self.backend!r}) scripts torch.nn.LSTM with "
                          "the same parameters: the scripted module runs torch's LSTM, not the kernels", stacklevel=2)
        return to_torch(self)

    def backend_for(self, input: Tensor | PackedSequence, *, explain: bool = False) -> str | Choice:
        """The concrete backend that ``forward(input)`` runs ("auto" resolved). ``explain=True``: a
        ``Choice`` (backend, reason, and the dispatch-table row that decided, or None: no measurement)."""
        self._update_flat_weights()
        x, batch, _ = self._time_major(input)         # checked as forward checks it
        return self._choose(input, x, batch, explain)

    def _choose(self, input, x: Tensor, batch: int, explain: bool) -> str | Choice:
        data, seq_len = x, (len(input.batch_sizes) if isinstance(input, PackedSequence) else x.shape[0])
        dtype = data.dtype
        if ops.autocast_enabled(data.device.type) and dtype != torch.float64:
            dtype = torch.get_autocast_dtype(data.device.type)      # the layers run in the autocast dtype
        choice = select_backend(self.backend, device=data.device, dtype=dtype, hidden_size=self.hidden_size,
                                proj_size=self.proj_size, batch=batch, seq_len=seq_len, num_layers=self.num_layers,
                                bidirectional=self.bidirectional, explain=True)
        if choice.backend == "triton":
            why = self._stack_reason(data.device, dtype, batch)
            how = (f"one launch for all {self.num_layers} layer(s) x {2 if self.bidirectional else 1} direction(s)"
                   if why is None else f"per-layer launches ({why})")
            choice = Choice(choice.backend, f"{choice.reason}; {how}", choice.row)
        return choice if explain else choice.backend

    def _stack_reason(self, device: torch.device, dtype: torch.dtype, batch: int) -> str | None:
        """Why the "triton" backend runs this call layer by layer instead of the whole stack in one launch, or
        None. ``stack=True`` turns a reason into an error."""
        if not (isinstance(self.stack, bool) or self.stack == "auto"):      # set after construction
            checks.fail(f"stack must be 'auto', True or False, got {self.stack!r}")
        if self.stack is False:
            return "stack=False"
        if self.stack == "auto" and self.num_layers == 1 and not self.bidirectional:
            return "one layer, one direction: the single-layer kernel is one launch already"
        why = stack_unsupported(device=device, dtype=dtype, hidden_size=self.hidden_size, num_layers=self.num_layers,
                                bidirectional=self.bidirectional, batch=batch, proj_size=self.proj_size)
        if why is None and ops.transform_active():
            why = "inside a torch.func transform: the layer op has the rules (autograd, batching) the stack's has not"
        if why is not None and self.stack is True:
            raise ValueError(f"stack=True cannot run this call in one launch: {why}")
        return why

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        x, B, unbatched = self._time_major(input)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
        else:
            sorted_indices = unsorted_indices = None
        h0, c0 = self._initial_state(hx, x, B, unbatched, sorted_indices)
        chosen = self._choose(input, x, B, explain=False)

        run = self._run_layers
        if chosen == "triton" and B and self._stack_reason(x.device, self._run_dtype(x), B) is None:
            run = self._run_stack
        if chosen == "cudnn":
            y, h_n, c_n = self._torch_lstm(x, batch_sizes if packed else None, h0, c0)
        elif packed:
            padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            y, h_n, c_n = run(padded, h0, c0, lengths, chosen)     # valid by construction, on the CPU
            y = pack_padded_sequence(y, lengths, enforce_sorted=True).data
        else:
            y, h_n, c_n = run(x, h0, c0, None, chosen)

        if packed:
            y = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        elif unbatched:
            y, h_n, c_n = y.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, (h_n, c_n)

    def _torch_lstm(self, x, batch_sizes, h0, c0):
        """The "cudnn" backend: the very call torch.nn.LSTM makes."""
        args = (self._flat_weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if batch_sizes is None:
            return torch._VF.lstm(x, (h0, c0), *args, False)
        return torch._VF.lstm(x, batch_sizes, (h0, c0), *args)

    def _run_dtype(self, x: Tensor) -> torch.dtype:
        if ops.autocast_enabled(x.device.type) and x.dtype != torch.float64:
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    def _run_stack(self, x, h0, c0, lengths, backend):
        """All layers and directions in one launch per pass (lstm_gpu/stack.py); arguments checked by ``forward``."""
        D = 2 if self.bidirectional else 1
        weights = dict(zip(self._flat_weights_names, self._flat_weights))
        per_layer = [[weights.get(f"{name}_l{k // D}{'_reverse' if k % D else ''}")
                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for k in range(self.num_layers * D)]
        if ops.autocast_enabled(x.device.type):
            x, h0, c0 = ops.autocast_cast(x.device.type, x, h0, c0)
            per_layer = [list(ops.autocast_cast(x.device.type, *w)) for w in per_layer]
        return run_stack(x, per_layer, h0, c0, checks.lengths_to_device(lengths, x.device),
                         bidirectional=self.bidirectional, dropout=self.dropout, training=self.training)

    def _run_layers(self, x, h0, c0, lengths, backend):
        """Layer by layer, direction by direction, on the unchecked single-layer path: ``forward`` has
        checked the input, the state and the weights once, and ``lengths`` (host, int64) move to the device
        once here, without a sync."""
        D = 2 if self.bidirectional else 1
        dev_lengths = checks.lengths_to_device(lengths, x.device)
        weights = dict(zip(self._flat_weights_names, self._flat_weights))
        autocast = ops.autocast_enabled(x.device.type)
        h_n, c_n = [], []
        for layer_index in range(self.num_layers):
            outputs = []
            for direction in range(D):
                k = layer_index * D + direction
                suffix = f"_l{layer_index}" + ("_reverse" if direction else "")
                w = [weights.get(f"{name}{suffix}") for name in
                     ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
                args = (x, *w, h0[k], c0[k])
                if autocast:
                    args = ops.autocast_cast(x.device.type, *args)
                x_, w_ih, w_hh, b_ih, b_hh, w_hr, h0_k, c0_k = args
                y, (h, c) = layer(x_, w_ih, w_hh, b_ih, b_hh, h0_k, c0_k, w_hr, dev_lengths, lengths,
                                  bool(direction), backend)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if D == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer_index < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n), torch.stack(c_n)

    # ---- checks --------------------------------------------------------------------------------
    def _time_major(self, input) -> tuple[Tensor, int, bool]:
        """(x, batch size, unbatched) of a forward input, checked: x is [T, B, I] time-major, or a PackedSequence's
        data [N, I]."""
        if isinstance(input, PackedSequence):
            checks.check_input(input.data, "input.data (PackedSequence)", ndim=2)
            if input.batch_sizes.numel() == 0:
                checks.fail("input (PackedSequence) has no time steps: batch_sizes is empty")
            x, B, unbatched = input.data, int(input.batch_sizes[0]), False
        else:
            if not isinstance(input, Tensor) or input.dim() not in (2, 3):
                checks.fail("input must be a 2-D (unbatched: [L, input_size]) or 3-D (batched) tensor or a "
                            f"PackedSequence, got {_describe(input)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            checks.check_input(x)
            B = x.shape[1]
        self._check_input_size(x)
        return x, B, unbatched

    def _check_input_size(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            checks.fail(f"input.size(-1) must be equal to input_size: expected {self.input_size}, "
                        f"got {x.shape[-1]}")
        w = self._flat_weights[0]
        if x.dtype != w.dtype and not ops.autocast_enabled(x.device.type):
            checks.fail(f"input dtype ({x.dtype}) does not match weight dtype ({w.dtype}): convert the "
                        f"input with input.to({w.dtype}) or the model with model.to({x.dtype})")
        if x.device != w.device:
            checks.fail(f"input is on {x.device} but the weights are on {w.device}")
        for name, p in zip(self._flat_weights_names, self._flat_weights):   # the layers trust them
            if p.dtype != w.dtype or p.device != w.device:
                checks.fail(f"parameter {name} is {p.dtype} on {p.device} but {self._flat_weights_names[0]} "
                            f"is {w.dtype} on {w.device}: all parameters must share one dtype and device")

    def _initial_state(self, hx, x, B, unbatched, sorted_indices):
        D = 2 if self.bidirectional else 1
        P = self.proj_size or self.hidden_size
        h_shape, c_shape = (self.num_layers * D, B, P), (self.num_layers * D, B, self.hidden_size)
        if hx is None:
            return x.new_zeros(h_shape), x.new_zeros(c_shape)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            checks.fail(f"hx must be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}")
        h0, c0 = hx
        ndim = 2 if unbatched else 3
        for name, t in (("h_0 (hx[0])", h0), ("c_0 (hx[1])", c0)):
            if not isinstance(t, Tensor) or t.dim() != ndim:
                kind = "unbatched 2-D" if unbatched else "batched 3-D"
                checks.fail(f"for {kind} input, {name} must be {ndim}-D, got {_describe(t)}")
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        exact = not ops.autocast_enabled(x.device.type)   # under autocast the op casts h0, c0
        checks.check_tensor("h_0 (hx[0])", h0, h_shape, x, check_dtype=exact)
        checks.check_tensor("c_0 (hx[1])", c0, c_shape, x, check_dtype=exact)
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        return h0, c0


def _describe(obj) -> str:
    if isinstance(obj, Tensor):
        return f"a {obj.dim()}-D tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__


def convert(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replace every ``torch.nn.LSTM`` in ``model`` by an ``lstm_gpu.LSTM`` sharing its parameters.

    In place (the same Parameter objects move over, so optimizers keep working); returns the model, or
    the new module when ``model`` is itself an nn.LSTM.

        >>> import torch, lstm_gpu
        >>> model = torch.nn.Sequential(torch.nn.LSTM(4, 8))
        >>> type(lstm_gpu.convert(model)[0]).__name__
        'LSTM'
    """
    if isinstance(model, nn.LSTM):
        return _from_torch(model, backend)
    for name, child in model.named_children():
        setattr(model, name, convert(child, backend=backend))
    return model


def to_torch(module: LSTM) -> nn.LSTM:
    """The ``torch.nn.LSTM`` sharing ``module``'s parameters (the same Parameter objects), in its train/eval mode.

        >>> import torch, lstm_gpu
        >>> ours = lstm_gpu.LSTM(4, 8)
        >>> lstm_gpu.to_torch(ours).weight_hh_l0 is ours.weight_hh_l0
        True
    """
    return _twin(module, nn.LSTM, share_hooks=False)


def _from_torch(old: nn.LSTM, backend: str) -> LSTM:
    check_backend_name(backend)
    return _twin(old, LSTM, share_hooks=True, backend=backend, stack="auto")


_OWN_ATTRIBUTES = ("backend", "stack")        # what lstm_gpu.LSTM adds to nn.RNNBase's state
_NOT_CARRIED = _OWN_ATTRIBUTES + ("_compiled_call_impl",)   # nn.LSTM.compile()'s forward would run, not the kernels


def _twin(src: nn.RNNBase, cls, share_hooks: bool, **attributes):
    """A ``cls`` (nn.LSTM or LSTM) holding ``src``'s state: the same Parameter objects, buffers and submodules, the
    same hooks (a user's forward hook, pruning's or the old weight_norm's pre-hook, each recomputing a weight from
    its parts), in ``src``'s train/eval mode. Copying the weights alone dropped the hooks without a word, and failed
    on a reparametrized weight (a computed tensor, not a Parameter). A module reparametrized with
    torch.nn.utils.parametrize has a generated class holding one property per parametrized tensor: the twin gets
    the same properties on a subclass of ``cls``. ``share_hooks``: the same hook dicts (``convert``: the module
    replaces ``src``, and the handles of hooks registered on ``src`` still remove them), or copies (``to_torch``: a
    hook registered on the twin, pruning it for one, leaves ``src`` alone)."""
    if parametrize.is_parametrized(src):
        properties = {k: v for k, v in vars(type(src)).items() if k not in ("__module__", "__doc__", "__qualname__")}
        cls = type("Parametrized" + cls.__name__, (cls,), properties)
    new = cls.__new__(cls)
    state = {k: v for k, v in vars(src).items() if k not in _NOT_CARRIED}
    for k, v in state.items():
        if k in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules") or (
                k.endswith("_hooks") or "_hooks_" in k) and not share_hooks:
            state[k] = copy.copy(v)             # the same entries; adding or assigning one later: one module only
    vars(new).update(state)
    vars(new).update(attributes)
    with torch.no_grad():                       # a parametrized weight computed with a graph: deepcopy refuses it
        new._init_flat_weights()                # its own lists of weights (RNNBase updates them in place)
    return new
