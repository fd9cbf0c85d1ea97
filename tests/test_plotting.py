"""tb_hf.plotting: object-API figures that draw what they are given."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tb_hf import plotting
from tb_hf.spectral import esd, fit_power_law

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture(scope="module")
def heavy_tailed():
    torch.manual_seed(0)
    w = torch.randn(200, 300) @ torch.diag(torch.rand(300) ** -0.7) / 30
    evals = esd(w)
    return evals, fit_power_law(evals, xmin_method="ks")


def test_plot_esd_draws_log_log_histogram_fit_and_xmin(heavy_tailed):
    evals, fit = heavy_tailed
    fig = plotting.plot_esd(evals, fit, title="w")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_title() == "w" and "λ" in ax.get_xlabel()
    fit_line = next(line for line in ax.lines if line.get_label().startswith("power law"))
    x, y = fit_line.get_data()
    assert x[0] == pytest.approx(fit.xmin)
    slope = math.log(y[-1] / y[0]) / math.log(x[-1] / x[0])
    assert slope == pytest.approx(-fit.alpha, rel=1e-9)  # the drawn line is λ^-α
    assert any(line.get_label().startswith("xmin") and line.get_xdata()[0] == fit.xmin for line in ax.lines)
    # The histogram is a density: ∫ p(λ) dλ = 1 over the drawn (positive) eigenvalues.
    patch = ax.patches[0]
    assert patch is not None


def test_plot_functions_draw_into_a_given_axes(heavy_tailed):
    evals, fit = heavy_tailed
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert plotting.plot_esd(evals, fit, ax=axes[0]) is fig
    assert plotting.plot_alpha({"m.layers.0": 3.0, "m.layers.1": 4.0}, ax=axes[1]) is fig
    assert plotting.plot_factors({"m.layers.0": 0.5, "m.layers.1": 1.5}, ax=axes[2]) is fig
    assert len(fig.axes) == 3


def test_esd_grid_titles_of_long_names_do_not_overlap(heavy_tailed):
    """Full LoRA matrix names used to run into the neighbouring panels' titles."""
    evals, fit = heavy_tailed
    names = [f"base_model.model.encoder.layer.{i}.attention.self.query.base_layer.weight" for i in range(3)]
    fig = plotting.plot_esds({n: (evals, fit) for n in names}, ncols=3)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 < right.x0  # no horizontal overlap between neighbouring titles
    for box, panel in zip(boxes, panels, strict=True):
        assert box.width <= panel.width * 1.05  # each title fits over its own panel
    assert all("\n" in ax.get_title() for ax in fig.axes)  # wrapped at a dot


def test_plot_esd_unfitted_and_empty():
    fig = plotting.plot_esd(torch.zeros(10), None)
    assert "no positive" in fig.axes[0].texts[0].get_text()
    evals = torch.rand(20) + 0.1
    fit = fit_power_law(evals)  # too_small
    fig = plotting.plot_esd(evals, fit)
    assert any("too_small" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_plot_alpha_reference_lines_points_and_gaps():
    units = {"enc.layer.0": 3.0, "enc.layer.1": math.nan, "enc.layer.2": 7.0}
    mats = {"enc.layer.0": {"q": 2.5, "k": 3.5}, "enc.layer.2": {"q": 6.0, "k": 8.0}}
    fig = plotting.plot_alpha(units, mats, title="t")
    ax = fig.axes[0]
    refs = sorted(line.get_ydata()[0] for line in ax.lines)
    assert refs == [2.0, 6.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert ax.get_xlabel() == "unit (enc.layer.*)" and "α" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "unit α (mean)" and {"q", "k"} <= set(labels)
    assert len(ax.collections) == 2  # one scatter per matrix kind


def test_plot_factors_around_one():
    fig = plotting.plot_factors({"a.0": 0.5, "a.1": 1.0, "a.2": 1.5})
    ax = fig.axes[0]
    tops = sorted(p.get_y() + p.get_height() for p in ax.patches)
    assert tops == pytest.approx([0.5, 1.0, 1.5])
    assert [t.get_text() for t in ax.texts] == ["0.50", "1.00", "1.50"]


def history_records():
    return [
        {"step": 0, "alpha": {"m.0": 3.0, "m.1": None}, "factor": {"m.0": 1.0, "m.1": 1.0}},
        {"step": 5, "alpha": {"m.0": 3.5, "m.1": 4.0}, "factor": {"m.0": 0.5, "m.1": 1.5}},
        {"step": 10, "alpha": {"m.0": 3.4, "m.1": 4.5}, "factor": {"m.0": 0.5, "m.1": 1.5}},
    ]


@pytest.mark.parametrize("key", ["alpha", "factor"])
def test_plot_history(key, tmp_path):
    records = history_records()
    fig = plotting.plot_history(records, key)
    heat, lines = fig.axes[0], fig.axes[1]
    mesh = heat.collections[0]
    data = mesh.get_array()
    assert data.shape == (2, 3)
    if key == "alpha":
        assert bool(data.mask[1, 0]) and data[1, 2] == 4.5  # the unfitted unit is blank
    assert heat.get_xlim() == pytest.approx((0, 15))  # each update's values hold until the next
    assert lines.get_xlabel() == "optimizer step"
    # α at each update; factors as steps held until the next update (the last one for one more interval)
    assert list(lines.lines[0].get_xdata()) == ([0, 5, 10] if key == "alpha" else [0, 5, 10, 15])
    path = plotting.save_figure(fig, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000 and path.endswith("h.png")
    with pytest.raises(ValueError, match="key must be"):
        plotting.plot_history(records, "lr")


def test_read_history(tmp_path):
    (tmp_path / "tempbalance").mkdir()
    path = tmp_path / "tempbalance" / "history.jsonl"
    records = history_records()
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    assert [r["step"] for r in plotting.read_history(tmp_path)] == [0, 5, 10]
    assert plotting.read_history(path) == plotting.read_history(tmp_path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        plotting.read_history(path)
    with pytest.raises(FileNotFoundError, match="history.jsonl"):
        plotting.read_history(tmp_path / "nothing")


def test_short_names():
    assert plotting.short_names(["a.b.0", "a.b.1"]) == (["0", "1"], "a.b.")
    assert plotting.short_names(["x"]) == (["x"], "")
    assert plotting.short_names(["a.0.q", "a.0.k"]) == (["q", "k"], "a.0.")
    assert plotting.short_names(["a.b", "a.b"]) == (["b", "b"], "a.")  # never empty


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'tb-hf\[plot\]'"):
        plotting.plot_factors({"a": 1.0})
