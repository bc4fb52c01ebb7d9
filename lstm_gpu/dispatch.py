"""What ``backend="auto"`` runs on a GPU: a kernel only where a committed GPU measurement shows it faster
than cuDNN for that GPU, dtype and shape bucket; cuDNN everywhere else.

The measurements live in ``dispatch_table.json`` beside this file, generated from the benchmark's CSVs
(reports/data/gpu-*.csv) by ``python -m bench.dispatch_table``; never edit it by hand. A row covers

    gpu       the device name as torch.cuda.get_device_name() gives it ("NVIDIA H100 80GB HBM3")
    dtype     fp16 | bf16 | fp32-ieee | fp32-tf32 (fp32: how cuDNN runs it, torch.backends.cudnn.allow_tf32)
    batch, hidden, seq_len   a bucket each: the next power of two at or above the value, so the row with
              batch 16 covers batches 9..16, hidden 1024 covers 513..1024, seq_len 1024 covers 513..1024
    layers, bidirectional    exact (rows without them: 1, False): a stack's measurement says nothing about
              one layer (H200: cuDNN ran a 2-layer B16 H512 fp16 stack 10x slower than our one launch, one
              such layer persistent, faster than ours)
    backend   the kernel that was faster than cuDNN at EVERY measured point of the bucket, forward and
              forward+backward both measured; "cudnn" where none was (the row says cuDNN won there)
    worst_ratio, points, sources   the slowest kernel/cuDNN time ratio seen, the points, the CSV files

No row for a call's bucket means no measurement: cuDNN. The measurements so far: one NVIDIA H200 run
(reports/data/gpu-nvidia-h200-*.csv, 2026-11-28); on every other GPU ``auto`` is cuDNN.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

TABLE_PATH = Path(__file__).with_name("dispatch_table.json")
KERNELS = ("triton", "numba")


@dataclass(frozen=True)
class Choice:
    """Which backend runs a call, and why: ``row`` is the dispatch-table row that decided (None: no row)."""
    backend: str
    reason: str
    row: dict | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.backend} ({self.reason})"


def bucket(n: int) -> int:
    """The bucket of a batch, hidden or sequence length: the next power of two ≥ n."""
    return 1 << max(0, int(n) - 1).bit_length()


def dtype_label(dtype: torch.dtype) -> str | None:
    """The benchmark's dtype name for a call's dtype right now (fp32: cuDNN's TF32 flag decides)."""
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32:
        try:
            return "fp32-tf32" if torch.backends.cudnn.allow_tf32 else "fp32-ieee"
        except RuntimeError:          # flags set through the newer API that the legacy one cannot read
            return None
    return None


class Table:
    """The rows of a dispatch table, indexed by (gpu, dtype, layers, bidirectional, batch bucket, hidden bucket,
    seq_len bucket)."""

    def __init__(self, rows: list[dict], sources: list[str] | None = None):
        self.rows = rows
        self.sources = sources or []
        self.index = {(r["gpu"], r["dtype"], r.get("layers", 1), bool(r.get("bidirectional", False)), r["batch"],
                       r["hidden"], r["seq_len"]): r for r in rows}
        self.gpus = {r["gpu"] for r in rows}

    @classmethod
    def load(cls, path: Path | str = TABLE_PATH) -> "Table":
        data = json.loads(Path(path).read_text())
        return cls(data.get("rows", []), data.get("sources", []))

    def lookup(self, gpu: str, dtype: str, batch: int, hidden: int, seq_len: int | None, layers: int = 1,
               bidirectional: bool = False) -> dict | list | None:
        """The row for this call, or None. ``seq_len`` None (unknown): the rows of every measured seq_len
        bucket of that (gpu, dtype, layers, bidirectional, batch, hidden), as a list, or None when there are none."""
        if gpu not in self.gpus:
            return None
        key = (gpu, dtype, int(layers), bool(bidirectional), bucket(batch), bucket(hidden))
        if seq_len is not None:
            return self.index.get((*key, bucket(seq_len)))
        rows = [r for k, r in self.index.items() if k[:6] == key]
        return rows or None


_TABLE: Table | None = None
_GPU_NAMES: dict[int, str] = {}


def table() -> Table:
    """The shipped table (read once)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = Table.load(TABLE_PATH) if TABLE_PATH.exists() else Table([])
    return _TABLE


def set_table(t: Table | None) -> None:
    """Use ``t`` instead of the shipped table (tests); None: the shipped one again."""
    global _TABLE
    _TABLE = t


def gpu_name(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _GPU_NAMES:
        _GPU_NAMES[index] = torch.cuda.get_device_name(index)
    return _GPU_NAMES[index]


def describe_row(row: dict) -> str:
    stack = f"{row.get('layers', 1)} layer(s){' bidirectional' if row.get('bidirectional') else ''} "
    return (f"dispatch table row {row['gpu']} {row['dtype']} {stack}batch<={row['batch']} hidden<={row['hidden']} "
            f"seq_len<={row['seq_len']}: {row['backend']}"
            + (f", worst {row['backend']}/cudnn time {row['worst_ratio']:.3g}" if row.get("worst_ratio") else "")
            + f" over {row.get('points', '?')} measured point(s)")


def measured_choice(device: torch.device, dtype: torch.dtype, *, batch: int, hidden_size: int,
                    seq_len: int | None, num_layers: int = 1, bidirectional: bool = False) -> Choice:
    """What the dispatch table says for an "auto" call on a CUDA device (before asking the kernel whether
    it can run the call): a kernel, or cudnn with the reason (no measurement, or cuDNN measured faster)."""
    t = table()
    if not t.rows:
        return Choice("cudnn", "no GPU measurement in the dispatch table: cuDNN")
    try:
        gpu = gpu_name(device)
    except (RuntimeError, AssertionError) as e:     # no CUDA here (a CPU build, no driver): nothing measured it
        return Choice("cudnn", f"the name of {device} cannot be read ({' '.join(str(e).split())[:80]}), so no "
                      "measurement applies: cuDNN")
    label = dtype_label(dtype)
    where = (f"{gpu}, {label or dtype}, {num_layers} layer(s){' bidirectional' if bidirectional else ''}, "
             f"batch {batch}, hidden {hidden_size}, seq_len {seq_len}")
    found = None if label is None else t.lookup(gpu, label, batch, hidden_size, seq_len, num_layers, bidirectional)
    if found is None:
        return Choice("cudnn", f"no measurement for {where}: cuDNN")
    if isinstance(found, list):            # seq_len unknown: only a choice every measured T agrees on
        backends = {r["backend"] for r in found}
        if len(backends) != 1:
            return Choice("cudnn", f"measurements for {where} differ by seq_len ({sorted(backends)}): cuDNN")
        found = max(found, key=lambda r: r.get("worst_ratio") or 0.0)
    if found["backend"] not in KERNELS:
        return Choice("cudnn", f"{describe_row(found)} (cuDNN measured at least as fast)", found)
    if found["backend"] == "triton" and label.startswith("fp32-"):
        from .kernels.triton_config import fp32_precision      # no triton import: plain host code
        if fp32_precision() != label[5:]:
            return Choice("cudnn", f"{describe_row(found)}, but measured with triton's fp32 matmuls in "
                                   f"{label[5:]} and they are {fp32_precision()} now: cuDNN", found)
    return Choice(found["backend"], describe_row(found), found)
