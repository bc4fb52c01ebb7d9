"""bench/gpu_session.sh and its Python driver bench/session.py, dry-run on CPU (LSTM_GPU_SESSION_DRY=1):
the same steps a GPU session runs, with tiny shapes through the emulators, so the plumbing is proven
before a session spends its device minutes. Nothing here says anything about a GPU."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import session

REPO = Path(__file__).resolve().parent.parent


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_stops_starting_cases_when_out_of_time(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    ctx = session.Ctx(True, tmp_path / "data", limit=0)
    rows = session.step_smoke(ctx)
    assert rows and all(r["status"] == "not run" for r in rows)


def test_warmup_covers_the_shapes_the_later_steps_launch():
    tasks = session.warmup_tasks(dry=False)
    smoke = {(t["dtype"], t["B"], t["H"]) for t in tasks if t["kind"] == "smoke"}
    assert len(smoke) == 31 and ("bf16", 64, 1024) in smoke and ("bf16", 16, 1536) in smoke   # 27 + H = 1536 + tf32
    assert ("fp32-tf32", 64, 1024) in smoke
    bench = {(t["dtype"], t["B"], t["H"], t["T"]) for t in tasks if t["kind"] == "bench"}
    assert {(d, b, h, t) for b, h, t, d, _ in session.HEADLINE_GPU} <= bench
    assert ("fp32-tf32", 1, 256, 1024) in bench                          # a --quick shape
    # the forward variants (HEADLINE_16BIT_EXTRA: counter, unfolded, rows, polled) compiled for the headline's 16-bit rows only
    variants = {(t["dtype"], t["B"], t["H"], t["T"]) for t in tasks if t.get("forward_variants")}
    assert variants == {(d, b, h, t) for b, h, t, d, _ in session.HEADLINE_GPU if d in ("fp16", "bf16")}
    stack = {(t["dtype"], t["B"], t["H"], t["T"], t["L"], t["bi"]) for t in tasks if t["kind"] == "stack"}
    assert stack == {(d, b, h, t, L, bi) for b, h, t, d, _, L, bi in session.STACK_GPU}
    assert [t["kind"] for t in tasks][:31] == ["smoke"] * 31            # in the order they are needed


@pytest.fixture(scope="module")
def dry_session(tmp_path_factory):
    """bash bench/gpu_session.sh with no step, dry: the whole session, each step in its own process under its
    own time limit (run once for the tests below: about 45 s here)."""
    out = tmp_path_factory.mktemp("session")
    env = dict(os.environ, OUT=str(out), LSTM_GPU_SESSION_DRY="1", LSTM_GPU_SESSION_BUDGET="400",
               PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    return out, r


@pytest.mark.slow
def test_the_shell_script_dry(dry_session):
    """The files the device tool brings back in $OUT, every step logged with its limit, none killed."""
    tmp_path, r = dry_session
    log = (tmp_path / "session.log").read_text()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("versions", "warmup", "smoke", "headline", "stack", "host", "floorscan", "insitu", "stalls", "gputests",
                 "quick", "profile"):
        assert f"=== {name} (limit" in log, name
    assert "TIME LIMIT" not in log and "=== session done" in log
    for name in ("session.log", "versions.json", "smoke.csv", "headline.csv", "headline.md", "host.csv"):
        assert (tmp_path / name).is_file(), name
    assert len(_csv(tmp_path / "smoke.csv")) == 6     # 2 backends x (2 variants + the projection)
    assert len([p for p in tmp_path.iterdir() if p.is_file()]) <= 8       # the device tool brings back 8 files


@pytest.mark.slow
def test_every_step_writes_its_files(dry_session):
    """What each step of the dry session wrote (versions, warm-up through a process pool, smoke, headline,
    stack, host time, quick, profile): every file where the README and the dispatch table expect it."""
    tmp_path, r = dry_session
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = tmp_path / "data"
    versions = json.loads((data / "cpu-dry-versions.json").read_text())
    for key in ("gpu", "sm_count", "driver", "torch_cuda", "cudnn", "torch", "triton", "numba", "numba_cuda",
                "git_sha", "machine"):
        assert key in versions
    smoke = _csv(data / "cpu-dry-smoke.csv")
    assert {(r["backend"], r["variant"]) for r in smoke} == {(b, v) for b in ("triton", "numba")
                                                             for v in session.SMOKE_VARIANTS + (session.PROJ_VARIANT,)}
    assert all(r["status"] == "ok" and float(r["ratio"]) <= 1 for r in smoke), smoke
    headline = _csv(data / "cpu-dry-headline.csv")
    times = {(r["provider"], r["mode"]): r["status"] for r in headline if r["metric"] == "time"}
    assert times == {(p, m): "ok" for p in session.HEADLINE_PROVIDERS for m in ("fwd", "fwd+bwd")}
    assert any(r["kernel"] == "floor" and r["status"] == "ok" for r in headline)
    md = (data / "cpu-dry-headline.md").read_text()
    assert md.startswith("Machine: `CPU") and md.count("| 2 | 8 | 4 | fp32-ieee |") == 2
    assert json.loads((data / "cpu-dry-headline.json").read_text())["machine"].startswith("CPU")
    stack = _csv(data / "cpu-dry-stack.csv")
    times = {(r["provider"], r["mode"], r["bidirectional"]): r["status"] for r in stack if r["metric"] == "time"}
    assert times == {(p, m, str(bi)): "ok" for p in session.STACK_PROVIDERS
                     for _, _, _, _, m, _, bi in session.STACK_DRY}
    assert all(r["layers"] == "2" for r in stack if r["kernel"] == "lstm")
    stack_md = (data / "cpu-dry-stack.md").read_text()
    assert stack_md.count("| 2 × ") == 2 and "one launch / per layer |" in stack_md    # issue 16's ratio, measured
    assert {r["backend"] for r in _csv(data / "cpu-dry-host.csv")} == {"reference", "triton"}
    quick = list(data.glob("cpu-*-session.csv"))
    assert len(quick) == 1 and _csv(quick[0])
    assert (data / "cpu-dry-profile.md").read_text().startswith("# Where the time goes")
    assert not list((REPO / "reports").rglob("cpu-dry-*")), "a dry run must not write under reports/"


def test_smoke_hidden_filter(monkeypatch):
    """LSTM_GPU_SMOKE_HIDDEN narrows the smoke grid (and its warm-up) to some hidden sizes: a short re-run of the
    cases that failed, in a second device call."""
    from bench import session
    every = session.SMOKE_GPU.cases()
    monkeypatch.setenv("LSTM_GPU_SMOKE_HIDDEN", "768,1024")
    some = session.SMOKE_GPU.cases()
    assert some == [c for c in every if c[1] in (768, 1024)] and len(some) < len(every)
    assert {t["H"] for t in session.warmup_tasks(False) if t["kind"] == "smoke"} == {768, 1024}


def test_stated_commit_names_the_tree(monkeypatch):
    """LSTM_GPU_COMMIT (the device call's command states the committed tree it ran) wins over the copy's .git."""
    from bench import env
    monkeypatch.setenv("LSTM_GPU_COMMIT", "abc1234")
    assert env.git_sha() == ("abc1234", False)
    monkeypatch.delenv("LSTM_GPU_COMMIT")
    assert env.git_sha()[0] != "abc1234"
