"""Where a benchmark ran: CPU emulation switches, the fp32 precision mode, and the environment record.

``prepare_cpu_emulation`` must run before triton or numba is first imported (the Triton interpreter and
the Numba CUDA simulator are chosen at import time); ``python -m bench`` calls it first thing.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CPU_NOTE = "CPU - not GPU timings"
EMULATION_VARS = ("TRITON_INTERPRET", "NUMBA_ENABLE_CUDASIM")

# fp32 precision modes of the sweep's dtype axis: the name says how fp32 matmuls run on every side
FP32_MODES = {"fp32-ieee": "ieee", "fp32-tf32": "tf32"}


def prepare_cpu_emulation() -> list[str]:
    """Without CUDA, run the kernel backends emulated on CPU. Returns warnings (empty if all is well)."""
    warnings = []
    if torch.cuda.is_available():
        return warnings
    for var in EMULATION_VARS:
        os.environ.setdefault(var, "1")
    late = [m for m in ("triton", "numba") if m in sys.modules]
    if late:
        warnings.append(f"{', '.join(late)} imported before the CPU emulation switches were set: the "
                        f"kernel backends may report themselves unsupported on CPU")
    return warnings


def on_gpu() -> bool:
    return torch.cuda.is_available()


def set_fp32_precision(mode: str) -> None:
    """Fix how fp32 matmuls run everywhere: "ieee" (full fp32) or "tf32".

    torch: the legacy flags (torch 2.11 on the GPU machine and 2.13 here both honour them, and setting
    them keeps the new per-backend flags consistent; mixing legacy and new setters makes torch refuse to
    read the flags). Triton: TRITON_F32_DEFAULT, the default input_precision of tl.dot for fp32 inputs.
    """
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"fp32 precision must be 'ieee' or 'tf32', got {mode!r}")
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    os.environ["TRITON_F32_DEFAULT"] = mode


def save_fp32_precision() -> tuple:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            os.environ.get("TRITON_F32_DEFAULT"))


def restore_fp32_precision(saved: tuple) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    if saved[2] is None:
        os.environ.pop("TRITON_F32_DEFAULT", None)
    else:
        os.environ["TRITON_F32_DEFAULT"] = saved[2]


def fp32_precision_state() -> dict:
    """The precision flags as they are now (recorded in the env JSON and per CSV row)."""
    state = {"torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT")}
    try:   # what the Triton backend will use (its module constant, else the env var, else ieee)
        from lstm_gpu.kernels.triton_config import fp32_precision
        state["lstm_gpu.kernels.triton_config.fp32_precision()"] = fp32_precision()
    except Exception:   # noqa: BLE001 - backend absent or not importable here
        pass
    for name, obj in (("torch.backends.cudnn.rnn.fp32_precision", getattr(torch.backends.cudnn, "rnn", None)),
                      ("torch.backends.cuda.matmul.fp32_precision", torch.backends.cuda.matmul)):
        try:
            state[name] = getattr(obj, "fp32_precision")
        except Exception:   # absent in older torch
            pass
    return state


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    except Exception:
        return None


def git_sha() -> tuple[str, bool]:
    """(sha or "unknown", dirty). Dirty = tracked files differ from HEAD. LSTM_GPU_COMMIT, where set, is the commit
    the caller says the tree is (clean): the device machine's copy of the repository kept the session's first
    commit in its .git and called every later tree "22b96d8 dirty" (H200 session, 2026-11-28)."""
    stated = os.environ.get("LSTM_GPU_COMMIT", "").strip()
    if stated:
        return stated, False
    sha = _git("rev-parse", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, bool(status)


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception as e:   # a broken install is worth recording, not crashing on
        return f"not importable ({type(e).__name__})"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except Exception:
        return None


def gpu_name() -> str:
    """The machine label for CSV rows and plot titles."""
    if on_gpu():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}) - not GPU timings"


def write_gpu_csv(what: str, rows: list[dict]) -> str:
    """Write ``rows`` to reports/data/gpu-<gpu>-<what>.csv (columns: the first row's keys); returns the path."""
    import csv
    path = os.path.join("reports", "data", f"gpu-{gpu_name().lower().replace(' ', '-')}-{what}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def collect(argv: list[str] | None = None) -> dict:
    """Everything needed to interpret a result file later."""
    sha, dirty = git_sha()
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "bench", *(argv or [])]),
        "gpu": gpu_name(),
        "device_kind": "cuda" if on_gpu() else "cpu",
        "not_gpu_timings": not on_gpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"),
        "numba": _version("numba"),
        "numba_cuda": _version("numba_cuda"),
        "git_sha": sha,
        "git_dirty": dirty,
        "fp32_precision": fp32_precision_state(),
        "emulation": {v: os.environ.get(v) for v in EMULATION_VARS},
    }
    if on_gpu():
        p = torch.cuda.get_device_properties(0)
        env.update({"sm_count": p.multi_processor_count, "compute_capability": f"{p.major}.{p.minor}",
                    "gpu_memory_gb": round(p.total_memory / 2**30, 1), "driver": _driver_version()})
    else:
        env.update({"sm_count": None, "compute_capability": None, "driver": None,
                    "note": f"{CPU_NOTE}: kernels ran emulated (Triton interpreter / Numba simulator), "
                            "cudnn is torch's CPU LSTM; the cudnn_regime column is what an H100 would use"})
    return env


def banner(env: dict) -> str:
    lines = [f"lstm_gpu bench on {env['gpu']}",
             f"  torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), triton {env['triton']}, "
             f"numba {env['numba']}, numba-cuda {env['numba_cuda']}",
             f"  git {env['git_sha'][:12]}{' (dirty)' if env['git_dirty'] else ''}, driver {env['driver']}, "
             f"SMs {env['sm_count']}"]
    if env["not_gpu_timings"]:
        lines.append("  *** NO GPU: these are NOT GPU timings (CPU emulation; for plumbing only) ***")
    return "\n".join(lines)
