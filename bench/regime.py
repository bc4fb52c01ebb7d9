"""Which cuDNN LSTM algorithm torch.nn.LSTM gets for a shape: the ``cudnn_regime`` column.

PyTorch chooses it (aten/src/ATen/native/cudnn/RNN.cpp, ``get_algo``), per call, for unpacked input:
  1. PERSIST_STATIC_SMALL_H  any dtype but fp64, H <= 192 (forward) / H <= 128 (backward)
  2. PERSIST_STATIC          fp16 only; 1 layer, unidirectional, H <= 1024, H and input size multiples of
                             128 (``use_persist_common_heuristics``); on sm >= 8.0 with >= 98 SMs and not
                             sm_86: batch a multiple of 8 and <= 128 (``use_persist_device_heuristics``;
                             sm_7.0 has its own batch/seq rule, sm_7.5 never)
  3. STANDARD                otherwise (a GEMM per step)
Projections (proj_size > 0) and packed input always get STANDARD. This mirrors the rule; it does not
ask cuDNN, so a torch that changes ``get_algo`` needs this file updated.
"""
from __future__ import annotations

from dataclasses import dataclass

SMALL_H, STATIC, STANDARD = "PERSIST_STATIC_SMALL_H", "PERSIST_STATIC", "STANDARD"


@dataclass(frozen=True)
class DeviceProps:
    major: int
    minor: int
    sm_count: int


H100 = DeviceProps(9, 0, 132)


def device_props() -> DeviceProps:
    """The current CUDA device, or an H100 SXM when there is none (CPU runs record the H100 regime)."""
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return DeviceProps(p.major, p.minor, p.multi_processor_count)
    return H100


def _persist_device_ok(batch: int, seq_len: int, dev: DeviceProps) -> bool:
    if dev.major == 7:
        if dev.minor == 5:
            return False
        return (((batch % 16 == 0 and batch not in (80, 112)) or batch == 8)
                and ((seq_len >= 40 and batch <= 128) or (seq_len >= 20 and batch <= 96)
                     or (seq_len >= 10 and batch <= 32)))
    if dev.major >= 8 and dev.sm_count >= 98 and dev.minor != 6:
        return batch % 8 == 0 and batch <= 128
    return False


def algo(*, forward: bool, dtype: str, batch: int, hidden: int, seq_len: int, input_size: int,
         layers: int = 1, bidirectional: bool = False, proj_size: int = 0,
         dev: DeviceProps = H100) -> str:
    """cuDNN's algorithm for one direction of the pass (``dtype``: a sweep dtype name or torch dtype name)."""
    dtype = str(dtype).replace("torch.", "")
    if proj_size:
        return STANDARD
    if dtype not in ("float64", "fp64") and dev.major >= 6 and hidden <= (192 if forward else 128):
        return SMALL_H
    if dtype in ("fp16", "float16", "half"):
        common = (layers == 1 and not bidirectional and hidden <= 1024 and hidden % 128 == 0
                  and input_size % 128 == 0)
        if common and _persist_device_ok(batch, seq_len, dev):
            return STATIC
    return STANDARD


def regime(mode: str, **shape) -> str:
    """The column value: the forward algorithm for "fwd"; "fwd/bwd" algorithms for "fwd+bwd" when they differ."""
    fwd = algo(forward=True, **shape)
    if mode == "fwd":
        return fwd
    bwd = algo(forward=False, **shape)
    return fwd if fwd == bwd else f"{fwd}/{bwd}"
