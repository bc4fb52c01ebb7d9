"""``python -m lstm_gpu``: check every backend this machine can run against torch.nn.LSTM.

For each backend (reference, cudnn, triton, numba) and a few module configurations (layers,
bidirectional, packed variable-length input, h0/c0), run forward and backward through
``lstm_gpu.LSTM(backend=...)`` and through ``torch.nn.LSTM`` with the same weights, and print the
largest error in the outputs and in every gradient. Without a GPU the Triton kernels run in the
interpreter and the Numba kernels in the simulator (one program / one block), so this works anywhere.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import textwrap
import time

import torch

if not torch.cuda.is_available():   # must precede the first import of triton / numba
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstm_gpu  # noqa: E402

CASES = [  # name, module kwargs, packed
    ("1 layer", dict(), False),
    ("2 layers, bidirectional, h0/c0", dict(num_layers=2, bidirectional=True), False),
    ("packed, variable lengths", dict(bidirectional=True), True),
    ("projection (proj_size 6), packed", dict(bidirectional=True, proj_size=6), True),
]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def _run(module, x, hx, lengths):
    x = x.clone().requires_grad_()
    hx = tuple(h.clone().requires_grad_() for h in hx)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    y, (h, c) = module(inp, hx)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, total_length=x.shape[0])
    (y.square().sum() + h.sum() + c.sum()).backward()
    grads = [x.grad, *(t.grad for t in hx)] + [p.grad for p in module.parameters()]
    return [y, h, c], grads


def check(backend: str, dtype: torch.dtype, device: str, kwargs: dict, packed: bool,
          T=7, B=3, I=5, H=16) -> tuple[str, float, float]:
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, **kwargs).to(device, dtype)
    ours = lstm_gpu.LSTM(I, H, backend=backend, **kwargs).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    P = kwargs.get("proj_size") or H
    hx = (torch.randn(L, B, P, device=device, dtype=dtype), torch.randn(L, B, H, device=device, dtype=dtype))
    lengths = torch.tensor([T, 2, T - 2]) if packed else None
    try:
        ours.backend_for(x)
    except (ValueError, NotImplementedError) as e:
        return f"skipped ({e})", float("nan"), float("nan")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref_out, ref_grads = _run(ref, x, hx, lengths)
        out, grads = _run(ours, x, hx, lengths)
    err = lambda a, b: max((p - q).abs().max().item() for p, q in zip(a, b))  # noqa: E731
    e_out, e_grad = err(out, ref_out), err(grads, ref_grads)
    ok = max(e_out, e_grad) <= TOLERANCE[dtype]
    return ("ok" if ok else "MISMATCH"), e_out, e_grad


EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NOTHING_CHECKED = 0, 1, 2, 3
CHECKABLE = tuple(b for b in lstm_gpu.BACKENDS if b != "auto")


def _epilog() -> str:
    tolerances = ", ".join(f"{str(d)[6:]} {tol:.0e}" for d, tol in TOLERANCE.items())
    cases = "; ".join(name for name, _, _ in CASES)
    intro = textwrap.fill(
        f"Each backend runs {len(CASES)} cases ({cases}) in float64 and float32 (T=7, B=3, input 5, hidden 16), "
        "forward and backward, through lstm_gpu.LSTM(backend=...) and torch.nn.LSTM with the same weights, "
        "inputs and (h0, c0), TF32 off on both sides.", 100)
    return f"""\
{intro}

Table columns:
  backend        the lstm_gpu backend checked
  dtype          float64 or float32
  case           the module configuration
  status         ok: both errors within the tolerance; MISMATCH: not; skipped (why): this machine
                 cannot run the case
  max |Δ| out    largest absolute difference over y, h_n and c_n
  max |Δ| grad   largest absolute difference over the gradients of x, h0, c0 and every parameter
  s              seconds the case took

Tolerances (absolute, on both columns): {tolerances}.

A backend this machine cannot run (e.g. numba on a CPU machine with NUMBA_ENABLE_CUDASIM=0) is reported as
skipped; the closing line counts the backends checked and skipped.

Exit status: {EXIT_OK} every checked case matches; {EXIT_MISMATCH} a MISMATCH; {EXIT_USAGE} bad arguments (e.g. an
unknown backend); {EXIT_NOTHING_CHECKED} nothing was checked (every backend skipped)."""


def _backend_list(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in lstm_gpu.BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(lstm_gpu.BACKENDS)}")
    return list(dict.fromkeys(names))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lstm_gpu", description=__doc__.replace("``", ""),
                                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", type=_backend_list, default=list(CHECKABLE), metavar="NAME[,NAME...]",
                   help=f"comma-separated backends to check, from {', '.join(lstm_gpu.BACKENDS)} "
                        f"(\"auto\": whichever backend auto picks here); default: {','.join(CHECKABLE)}")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}): TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')} "
        f"(triton interpreter), NUMBA_ENABLE_CUDASIM={os.environ.get('NUMBA_ENABLE_CUDASIM')} (numba simulator)")
    print(f"lstm_gpu {lstm_gpu.__version__} | torch {torch.__version__} | python {platform.python_version()}")
    print(f"device: {where}\n")
    print(f"{'backend':<10} {'dtype':<8} {'case':<34} {'status':<10} {'max |Δ| out':>12} {'max |Δ| grad':>12} {'s':>6}")
    failures = 0
    checked, skipped = [], []
    for backend in args.backends:
        try:
            lstm_gpu.select_backend(backend, device=device, dtype=torch.float32, hidden_size=16)
        except (ValueError, NotImplementedError, ModuleNotFoundError) as e:
            why = (f"the Python module {e.name!r} is not installed (pip install --no-deps leaves out the "
                   "kernels' dependencies: see README.md)" if isinstance(e, ModuleNotFoundError) else e)
            print(f"{backend:<10} skipped: {why}")
            skipped.append(backend)
            continue
        ran = 0
        for dtype in (torch.float64, torch.float32):
            for name, kwargs, packed in CASES:
                t0 = time.perf_counter()
                status, e_out, e_grad = check(backend, dtype, device, kwargs, packed)
                failures += status == "MISMATCH"
                ran += not status.startswith("skipped")
                print(f"{backend:<10} {str(dtype)[6:]:<8} {name:<34} {status:<10} {e_out:>12.2e} {e_grad:>12.2e} "
                      f"{time.perf_counter() - t0:>6.1f}")
        (checked if ran else skipped).append(backend)
    counts = (f"{len(checked)} backend{'s' * (len(checked) != 1)} checked ({', '.join(checked) or 'none'}), "
              f"{len(skipped)} skipped ({', '.join(skipped) or 'none'})")
    if failures:
        print(f"\n{failures} MISMATCHES; {counts}")
        return EXIT_MISMATCH
    if not checked:
        print(f"\nNOTHING CHECKED: {counts}")
        return EXIT_NOTHING_CHECKED
    print(f"\nall checked backends match torch.nn.LSTM; {counts}")
    return EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
