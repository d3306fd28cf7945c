"""The figures tell their lines apart: a study of many methods (the reference-methods one has 16) once drew two
methods in one colour, since matplotlib's default cycle has 10."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from dpo_ref.reporting import plots


def _settings(n_methods: int) -> list[dict]:
    rows = [{"objective": "sft", "reference": None, "beta": None, "win_rate": 0.5, "reward": 0.7, "kl_sft": 0.0,
             "length": 6.0, "kl": 0.0, "status": "done"}]  # fmt: skip
    for m in range(n_methods):
        for beta in (1.0, 0.1):
            point = {"win_rate": 0.5 + m / 100, "reward": 0.7, "kl_sft": 1 / beta, "length": 7.0, "kl": 1 / beta}
            rows.append({"objective": f"loss{m}", "reference": "sft", "beta": beta, "status": "done", **point})
    return rows


@pytest.fixture
def figures(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path, rect=(0, 0, 1, 1): drawn.append(fig))
    return drawn


def _line_looks(ax) -> list[tuple[str, str]]:
    """(colour, marker) of each errorbar line: the container holds the label, its first line the data."""
    return [(to_hex(c.lines[0].get_color()), c.lines[0].get_marker()) for c in ax.containers]


@pytest.mark.parametrize("n_methods", [3, 16, 25])
def test_every_line_of_the_frontier_has_its_own_colour_and_marker(figures, tmp_path, n_methods):
    plots.plot_frontier(_settings(n_methods), tmp_path / "f.png", "t")
    [fig] = figures
    looks = _line_looks(fig.axes[0])
    assert len(looks) == n_methods and len(set(looks)) == n_methods
    if n_methods <= 20:  # up to tab20's size the colours alone differ
        assert len({c for c, _ in looks}) == n_methods


def test_a_long_legend_sits_beside_the_panels_not_over_them(figures, tmp_path):
    plots.plot_frontier(_settings(16), tmp_path / "f.png", "t")
    plots.plot_beta(_settings(16), tmp_path / "b.png", "t")
    for fig in figures:
        fig.canvas.draw()
        legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
        last_panel = fig.axes[-1].get_window_extent()
        assert legend.get_window_extent().x0 >= last_panel.x1
        assert len(legend.get_texts()) >= 16
        assert "SFT" in [t.get_text() for t in legend.get_texts()]  # the SFT model's entry, as with a short legend
