"""DistributedDataParallel with lstm_gpu.LSTM on CPU (gloo, two processes): synchronised gradients equal
those of one process on the whole batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lstm_gpu


def make_model():
    torch.manual_seed(0)
    return lstm_gpu.LSTM(3, 5, num_layers=2, bidirectional=True, backend="reference").double()


def make_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, 3, generator=g, dtype=torch.float64)


def loss_fn(model, x):
    y, (h, _) = model(x)
    return y.square().mean() + h.mean()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        shard = make_batch().chunk(world, dim=1)[rank]     # each rank gets half the batch
        loss_fn(model, shard).backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
        dist.barrier()      # both ranks done with gloo before either tears it down
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's teardown. Through it a rank sometimes aborted ("terminate called
    # without an active exception", a C++ thread still joinable at exit): 3-4 runs in 10 on this machine,
    # 1 in about 35 after the barrier above, before this session's changes too.
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow     # spawns two processes: 8 s on 2 cores
def test_ddp_gradients_equal_single_process(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out)

    model = make_model()
    x = make_batch()
    # mean over ranks of per-shard losses == what DDP's gradient averaging computes
    sum(loss_fn(model, s) for s in x.chunk(2, dim=1)).div(2).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ddp_grads[n], p.grad, atol=1e-12), n
