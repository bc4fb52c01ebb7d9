"""Train a character-level language model with torch.nn.LSTM and with lstm_gpu.LSTM from the same seed.

The convergence test of the project: the loss curves must agree (to rounding in float64 on CPU; in the
plotted comparison on GPU). The text is the Zen of Python, which ships with every Python (``import this``).

    python -m bench.train_charlm --backends nn,reference --steps 200 --plot reports/charlm.png
    python -m bench.train_charlm --device cuda --dtype float32 --backends nn,cudnn,triton,numba --plot ...
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

import lstm_gpu


def zen_of_python() -> str:
    import codecs
    import this  # noqa: F401  (prints the Zen once; its text is stored rot13-encoded)
    return codecs.decode(this.s, "rot13")


class CharLM(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)


def batches(data: torch.Tensor, steps: int, batch: int, seq: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        idx = start[:, None] + torch.arange(seq + 1)
        chunk = data[idx]
        yield chunk[:, :-1], chunk[:, 1:]


def train(backend: str, *, steps=100, hidden=64, layers=2, batch=16, seq=32, lr=3e-3, seed=0,
          device="cpu", dtype=torch.float32, text: str | None = None):
    """Train from ``seed``; ``backend`` is "nn" (torch.nn.LSTM) or an lstm_gpu backend name.
    Returns (loss per step, tokens per second)."""
    text = text or zen_of_python()
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(ch) for ch in text])
    torch.manual_seed(seed)
    model = CharLM(len(vocab), hidden, layers)
    if backend != "nn":
        model = lstm_gpu.convert(copy.deepcopy(model), backend=backend)
    model = model.to(device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, tokens, elapsed = [], 0, 0.0
    for x, target in batches(data, steps, batch, seq, seed):
        x, target = x.to(device), target.to(device)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1).float(), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        tokens += x.numel()
        losses.append(loss.item())
    return losses, tokens / elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="nn,reference")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--json", help="write the curves and tokens/s here")
    p.add_argument("--plot", help="write a PNG of the loss curves here")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (not GPU timings)"
    print(f"torch {torch.__version__} | {where} | {args.dtype}")
    results = {}
    for backend in args.backends.split(","):
        losses, tps = train(backend, steps=args.steps, hidden=args.hidden, layers=args.layers, batch=args.batch,
                            seq=args.seq, device=args.device, dtype=dtype)
        results[backend] = {"loss": losses, "tokens_per_s": tps}
        print(f"{backend:>10}: final loss {losses[-1]:.4f}  {tps:,.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "dtype": args.dtype, "args": vars(args), "results": results}, f)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in results.items():
            ax.plot(r["loss"], label=f"{name} ({r['tokens_per_s']:,.0f} tok/s)")
        ax.set(xlabel="step", ylabel="cross-entropy", title=f"char-LM on the Zen of Python — {where}, {args.dtype}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return results


if __name__ == "__main__":
    main()
