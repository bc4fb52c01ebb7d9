"""lstm_gpu: a persistent fused LSTM for PyTorch on NVIDIA GPUs, with a drop-in ``LSTM`` module."""
from .backends import BACKENDS, select_backend
from .checks import LSTMArgumentError
from .functional import lstm
from .module import LSTM, convert
from . import ops  # noqa: F401  (registers the lstm_gpu:: custom ops)

__all__ = ["LSTM", "lstm", "convert", "select_backend", "BACKENDS", "LSTMArgumentError"]
__version__ = "0.1.0"
