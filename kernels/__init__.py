"""The hand-written kernels: Triton (triton_lstm.py) and Numba-CUDA (numba_lstm.py).

This folder is installed as ``lstm_gpu.kernels`` (pyproject.toml maps it); a top-level package named
``kernels`` would clash with an unrelated PyPI package, so importing it under any other name is refused.
"""
if __name__ != "lstm_gpu.kernels":
    raise ImportError(
        f"the kernels folder must be imported as 'lstm_gpu.kernels', not {__name__!r}: "
        "import lstm_gpu (installed, or with the source tree on PYTHONPATH) and then lstm_gpu.kernels")
