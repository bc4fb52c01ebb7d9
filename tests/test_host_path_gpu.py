"""The host path on a GPU (marker ``gpu``): a module call does not synchronise the device, and a kernel
runs on the input's device when another one is current. The CPU versions with fakes are
tests/test_host_path.py and tests/test_launch_host.py.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_gpu
from helpers import skip_unless_runs_on_cuda

pytestmark = pytest.mark.gpu
BACKENDS = ["reference", "triton", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_call_with_lengths_does_not_synchronise(backend):
    """torch's sync debug mode raises on any synchronising torch call (a pageable copy to the GPU,
    ``int(t.min())`` on a GPU tensor, ``.item()``); warm up first (compiles, allocator growth)."""
    skip_unless_runs_on_cuda(backend)
    torch.manual_seed(0)
    m = lstm_gpu.LSTM(32, 64, num_layers=2, bidirectional=True, backend=backend).cuda()
    x = torch.randn(7, 4, 32, device="cuda")
    packed = pack_padded_sequence(x, torch.tensor([7, 5, 2, 1]))
    for _ in range(2):
        m(packed), m(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            m(packed), m(x)
        y, _ = m(packed)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(y.data).all()


@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_kernel_runs_on_the_input_device_not_the_current_one(backend):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    skip_unless_runs_on_cuda(backend)
    torch.manual_seed(0)
    ref = lstm_gpu.LSTM(32, 64, backend="reference").to("cuda:1")
    m = lstm_gpu.LSTM(32, 64, backend=backend).to("cuda:1")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(9, 3, 32, device="cuda:1")
    with torch.cuda.device(0):
        y, _ = m(x)
    torch.testing.assert_close(y, ref(x)[0], atol=1e-4, rtol=1e-4)
