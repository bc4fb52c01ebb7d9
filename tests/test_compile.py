"""torch.compile(fullgraph=True) of a model using lstm_gpu.LSTM: no graph breaks, exact, dynamic length.

torch.nn.LSTM cannot do this: Dynamo refuses every nn.LSTM instance.
"""
import pytest
import torch

import lstm_gpu
from helpers import assert_close, twin_lstms


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow     # Dynamo + AOTAutograd, 5-6 s on 2 cores
def test_compiled_forward_and_backward_match_nn_lstm_with_dynamic_length():
    ref, ours = twin_lstms(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float32)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    for step, T in enumerate((5, 7, 2)):
        x = torch.randn(2, T, 3)
        torch._dynamo.mark_dynamic(x, 1)
        with torch.compiler.set_stance("fail_on_recompile" if step else "default"):
            for m in (ref, compiled):
                m.zero_grad()
            y_ref, (h_ref, _) = ref(x)
            y, (h, _) = compiled(x)
            (y.square().sum() + h.sum()).backward()
            (y_ref.square().sum() + h_ref.sum()).backward()
        assert_close(y, y_ref, 1e-5, what=f"output T={T}")
        for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
            assert_close(p.grad, q.grad, 1e-5, what=f"grad {n} T={T}")


@pytest.mark.slow     # Inductor codegen, 5-6 s on 2 cores
def test_inductor_compiles_a_model_with_the_lstm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(lstm_gpu.LSTM(3, 8, batch_first=True))
    head = torch.nn.Linear(8, 2)

    def f(x):
        y, _ = model(x)
        return head(torch.relu(y)).sum()
    x = torch.randn(2, 4, 3)
    eager = f(x)
    compiled = torch.compile(f, fullgraph=True)(x)
    assert_close(compiled, eager, 1e-5, what="inductor")


def test_auto_under_compile_is_one_opaque_op_with_dynamic_length():
    """auto on the CPU runs torch's own LSTM eagerly, but under torch.compile the reference op: torch's LSTM
    would be unrolled step by step into the graph and recompiled for every sequence length."""
    torch.manual_seed(0)
    ref, ours = torch.nn.LSTM(3, 4, num_layers=2), lstm_gpu.LSTM(3, 4, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    compiled = torch.compile(ours, fullgraph=True, backend=record)
    for step, T in enumerate((5, 9)):
        x = torch.randn(T, 2, 3)
        torch._dynamo.mark_dynamic(x, 0)
        with torch.compiler.set_stance("fail_on_recompile" if step else "default"):
            assert_close(compiled(x)[0], ref(x)[0], 1e-5, what=f"output T={T}")
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("lstm_gpu.layer_fwd" in o for o in ops) == 2 and not any("lstm" in o and "lstm_gpu" not in o
                                                                        for o in ops), ops


def test_nn_lstm_itself_cannot_compile_fullgraph():
    """The reason lstm_gpu.LSTM is built on RNNBase: if this starts passing, the README can say so."""
    compiled = torch.compile(torch.nn.LSTM(3, 4), fullgraph=True, backend="eager")
    with pytest.raises(Exception):
        compiled(torch.randn(5, 2, 3))


def test_torch_export_and_inference_mode():
    ref, ours = twin_lstms(3, 4, num_layers=2, bidirectional=True, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    exported = torch.export.export(ours, (x,))
    assert_close(exported.module()(x)[0], ref(x)[0], 1e-5, what="exported")
    with torch.inference_mode():
        assert_close(ours(x)[0], ref(x)[0], 1e-5, what="inference_mode")
