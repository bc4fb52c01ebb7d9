"""lstm_gpu: a persistent fused LSTM for PyTorch on NVIDIA GPUs, with a drop-in ``LSTM`` module."""
import os as _os

# Installed, kernels/ is the subpackage lstm_gpu.kernels (pyproject.toml maps it). Run from a source tree
# without installing (PYTHONPATH=.), the tree's root joins the package path so kernels/ is found the same.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "kernels", "host.py")) and _root not in __path__:
    __path__.append(_root)
from .backends import BACKENDS, select_backend
from .checks import LSTMArgumentError
from .functional import lstm
from .module import LSTM, convert, to_torch
from . import ops  # noqa: F401  (registers the lstm_gpu:: custom ops)

__all__ = ["LSTM", "lstm", "convert", "to_torch", "select_backend", "BACKENDS", "LSTMArgumentError"]
__version__ = "0.1.0"
