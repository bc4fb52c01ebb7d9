"""The study guide (kernels/README.md) stays true to the code: its line links, its worked example, its
static-profiler table and its figures.

- Every link into the code is [`fragment`](file.py#Lnn): line nn must hold the fragment, and no other line
  of that file may (so ``python -m bench.guide links`` can always re-anchor it). When a kernel changes, the
  failure lists each link that moved and where its fragment is now.
- Every row of the equation tables links the Triton AND the Numba kernel.
- The worked example is what lstm_gpu/reference.py computes now, and its values agree with PyTorch
  autograd run on an independent loop (so the reference and the guide's equations are checked too).
- The static table is what reports/data/static-h100*.csv hold (no sm_90 compile here).
- The figures exist, are small, and the work-split script still draws.
Fast (no GPU, no compile): about a second plus matplotlib's import.
"""
import re

import pytest
import torch

from bench import guide

TEXT = guide.GUIDE.read_text()


def test_every_code_link_points_at_the_line_holding_its_fragment():
    problems = guide.link_problems(TEXT)
    assert not problems, ("kernels/README.md links that no longer hold (run python -m bench.guide links, or "
                          "pick another fragment):\n" + "\n".join(problems))
    assert len(list(guide.LINK.finditer(TEXT))) >= 60


def _equation_rows():
    rows, inside = [], False
    for line in TEXT.splitlines():
        if line.startswith("| equation |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("|"):
            rows.append(line)
        else:
            inside = False
    return rows


def test_each_equation_links_both_kernels():
    rows = _equation_rows()
    assert len(rows) >= 16, "the forward and backward equation tables were not found"
    for row in rows:
        if "(one process: nothing to do)" in row or "the same step counter as forward" in row:
            continue
        assert "(triton_lstm.py#L" in row or "(triton_barrier.py#L" in row, f"no Triton link: {row}"
        assert "(numba_kernels.py#L" in row, f"no Numba link: {row}"


def test_relink_moves_a_link_and_reports_what_it_cannot(tmp_path):
    (tmp_path / "k.py").write_text("a = 1\nb = a + 1  # the cell\nc = 2\nc = 2\n")
    moved, problems = guide.relink("[`b = a + 1`](k.py#L1) [`c = 2`](k.py#L3)", base=tmp_path)
    assert moved.startswith("[`b = a + 1`](k.py#L2)") and len(problems) == 1 and "on 2 lines" in problems[0]
    bad = guide.link_problems("[`b = a + 1`](k.py#L1) [b](k.py#L2) [`zz`](k.py#L2) [`a`](gone.py#L1)",
                              base=tmp_path)
    assert len(bad) == 4, bad


def test_worked_example_block_is_what_the_reference_computes():
    assert guide.read_block(TEXT, "example") == guide.example_markdown(), \
        "the worked example is stale: python -m bench.guide example"


def test_worked_example_agrees_with_autograd():
    """An independent autograd loop (no lstm_gpu code): z, gates, c, h; then ∂L/∂h_t, ∂L/∂c_t, ∂L/∂z_t,
    the initial-state gradients and dW_hh for L = Σ_t Σ_j h_t[j]."""
    e = guide.worked_example()
    p = e["inputs"]
    H = 2
    w_hh = p["w_hh"].clone().requires_grad_()
    h0 = torch.zeros(H, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(H, dtype=torch.float64, requires_grad=True)
    h, c, zs, hs, cs = h0, c0, [], [], []
    for t in range(3):
        z = p["x"][t] * p["w_ih"][:, 0] + p["b"] + w_hh @ h
        z.retain_grad()
        i, f, g, o = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H]), torch.tanh(z[2 * H:3 * H]), torch.sigmoid(z[3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        c.retain_grad()
        h.retain_grad()
        zs.append(z)
        hs.append(h)
        cs.append(c)
        for name, v in zip("ifgo", (i, f, g, o)):
            torch.testing.assert_close(e[name][t], v.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(e["z"][t], z.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(e["c"][t], c.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(e["h"][t], h.detach(), rtol=0, atol=1e-12)
    torch.stack(hs).sum().backward()
    for t in range(3):
        torch.testing.assert_close(e["dh_t"][t], hs[t].grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(e["dc_t"][t], cs[t].grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(e["dz"][t], zs[t].grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(e["dh0"], h0.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(e["dc0"], c0.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(e["dw_hh"], w_hh.grad, rtol=0, atol=1e-12)


def test_static_table_is_the_committed_csv():
    assert guide.read_block(TEXT, "static") == guide.static_markdown(), \
        "the static table differs from reports/data/static-h100*.csv: python -m bench.guide static"


@pytest.mark.parametrize("name", sorted(guide.FIGURE_FILES.values()))
def test_figures_are_committed_small_and_shown(name):
    path = guide.FIGURES / name
    assert path.is_file(), f"missing {path}: python -m bench.guide split gates"
    assert path.stat().st_size < 300_000, f"{name} is {path.stat().st_size} bytes: keep committed PNGs small"
    assert f"(../reports/guide/{name})" in TEXT


def test_work_split_figure_still_draws(tmp_path):
    out = guide.draw_work_split(tmp_path / "split.png")
    assert out.stat().st_size > 10_000


def test_guide_is_linked_from_the_top_readme():
    assert re.search(r"\]\(kernels/README\.md\)", (guide.ROOT / "README.md").read_text())
