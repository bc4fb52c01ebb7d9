"""The main job, ``python -m lstm_gpu``: runs, finds every checked backend matching nn.LSTM, and never
passes on nothing (an unknown backend is a usage error; a run that checked nothing fails)."""
import pytest

import lstm_gpu
import lstm_gpu.verify


def test_main_job_passes_for_reference_and_cudnn(capsys):
    assert lstm_gpu.verify.main(["--backends", "reference,cudnn"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.count(" ok ") == 2 * 2 * len(lstm_gpu.verify.CASES)   # 2 backends x 2 dtypes
    assert out.rstrip().endswith("2 backends checked (reference, cudnn), 0 skipped (none)")


@pytest.mark.parametrize("backends", ["foo", "reference,foo", "", ","])
def test_unknown_backend_is_a_usage_error(backends, capsys):
    with pytest.raises(SystemExit) as e:
        lstm_gpu.verify.main(["--backends", backends])
    assert e.value.code == lstm_gpu.verify.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m lstm_gpu") and "unknown backend" in err
    assert "choose from auto, reference, cudnn, triton, numba" in err


def test_a_run_that_checked_nothing_fails(monkeypatch, capsys):
    def cannot(backend, **kwargs):
        raise ValueError(f"backend={backend!r} cannot run this call: staged by the test")
    monkeypatch.setattr(lstm_gpu, "select_backend", cannot)
    assert lstm_gpu.verify.main(["--backends", "reference,cudnn"]) == lstm_gpu.verify.EXIT_NOTHING_CHECKED != 0
    out = capsys.readouterr().out
    assert "reference  skipped: backend='reference' cannot run this call: staged by the test" in out
    assert "match" not in out
    assert out.rstrip().endswith("NOTHING CHECKED: 0 backends checked (none), 2 skipped (reference, cudnn)")


def test_a_backend_whose_package_is_missing_is_skipped_not_a_crash(monkeypatch, capsys):
    select = lstm_gpu.select_backend

    def no_triton(backend, **kwargs):
        if backend == "triton":
            raise ModuleNotFoundError("No module named 'triton'", name="triton")
        return select(backend, **kwargs)
    monkeypatch.setattr(lstm_gpu, "select_backend", no_triton)
    assert lstm_gpu.verify.main(["--backends", "triton,reference"]) == 0
    out = capsys.readouterr().out
    assert "triton     skipped: the Python module 'triton' is not installed" in out
    assert out.rstrip().endswith("1 backend checked (reference), 1 skipped (triton)")


def test_help_names_the_program_options_columns_and_tolerances(capsys):
    with pytest.raises(SystemExit) as e:
        lstm_gpu.verify.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lstm_gpu [-h] [--backends NAME[,NAME...]]")
    assert "comma-separated backends to check" in out
    for column in ("backend", "dtype", "case", "status", "max |Δ| out", "max |Δ| grad", "s "):
        assert f"\n  {column}" in out, column
    assert "float64 1e-10, float32 1e-04" in out
    assert "Exit status: 0" in out
