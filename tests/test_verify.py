"""The main job, ``python -m lstm_gpu``, runs and finds every checked backend matching nn.LSTM."""
import lstm_gpu.verify


def test_main_job_passes_for_reference_and_cudnn(capsys):
    assert lstm_gpu.verify.main(["--backends", "reference,cudnn"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.count(" ok ") == 12
