"""lstm_gpu benchmark suite: ``python -m bench`` (sweep), ``python -m bench.plot``, ``python -m bench.profile``.

    env.py        CPU emulation switches, fp32 precision mode, the environment record (versions, GPU, git)
    providers.py  one setup function per provider (triton, numba, cudnn, eager, compiled, flashrnn, reference)
    gate.py       the correctness gate against the reference recurrence (dtype tolerances)
    timing.py     CUDA-event / perf_counter timing (p50, p20, p80) and peak memory
    regime.py     which cuDNN algorithm torch.nn.LSTM gets for a shape
    floor.py      the floor microbenchmark: a Triton kernel doing only the grid barrier + h exchange
    sweep.py      the sweep loop and the long-format CSV
    plot.py       CSVs -> PNGs
    profile.py    torch.profiler launch counts and time split; ncu DRAM/L2 bytes per step

Importing this package imports neither triton nor numba (the CPU emulation switches must be set first).
"""
