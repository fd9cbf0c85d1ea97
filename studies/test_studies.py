"""Every study's configs and committed runs: each config starts with the command that runs it and every run of it
parses as run_glue will run it; every run packed in a study's archive is finished under its config (so resuming the
study skips it), and the committed tables are what aggregating the archive writes, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recipes import sweep
from recipes.sweep.grid import validate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "studies").glob("*/*.yaml"))
#: The configs whose runs are committed: their output_dir (in studies/) holds the stage's tables.
STAGES = [p for p in CONFIGS if (ROOT / sweep.load_config(p)["output_dir"] / "results.csv").is_file()]
TABLES = ("results.csv", "summary.csv", "summary.md", "pooled.csv", "contrasts.csv", "alpha.csv")


def _id(path: Path) -> str:
    return path.relative_to(ROOT / "studies").as_posix()


def test_every_study_has_a_readme_and_the_committed_stages_are_found():
    assert {p.parent.name for p in CONFIGS} <= {p.parent.name for p in (ROOT / "studies").glob("*/README.md")}
    archives = [ROOT / sweep.load_config(p)["output_dir"] / "runs.jsonl.xz" for p in STAGES]
    assert len(STAGES) >= 12 and all(path.is_file() for path in archives)  # the tables come with their runs


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_each_config_starts_with_its_command_and_every_run_parses(path):
    text = path.read_text()
    assert text.startswith("# python") and path.relative_to(ROOT).as_posix() in text.splitlines()[0]
    config = sweep.load_config(path)
    runs = sweep.expand_grid(config)
    assert runs
    validate(config, runs)  # every run's arguments parse as run_glue's (a typo in method_args fails here)


@pytest.mark.parametrize("path", STAGES, ids=_id)
def test_every_packed_run_is_finished_under_its_config(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # output_dir and glue_dir are relative to the repository root
    config = sweep.load_config(path)
    out = Path(config["output_dir"])
    runs = {run.name: run for run in sweep.expand_grid(config)}
    packed = sweep.archive.load(out)
    assert packed and set(packed) <= set(runs)
    assert {name: sweep.status(runs[name]) for name in packed} == dict.fromkeys(packed, "done")


@pytest.mark.parametrize("path", STAGES, ids=_id)
def test_aggregating_the_archive_gives_the_committed_tables(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sweep.report, "plot_scores", lambda *args, **kwargs: None)  # the figure is not compared
    config = sweep.load_config(path)
    out = Path(config["output_dir"])
    shutil.copy(out / "runs.jsonl.xz", tmp_path)
    sweep.aggregate(config | {"output_dir": str(tmp_path)}, sweep.expand_grid(config))
    committed = {name: (out / name).read_bytes() for name in TABLES if (out / name).is_file()}
    assert {name: (tmp_path / name).read_bytes() for name in TABLES if (tmp_path / name).is_file()} == committed


def test_paired_verdict_on_made_up_scores(tmp_path):
    """studies/paired_verdict.py: the numbers of a known set of paired differences."""
    import csv
    import math

    import paired_verdict

    rows = []
    for seed, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.70), (0.65, 0.66), (0.80, 0.70)]):
        for method, score in (("new", a), ("old", b)):
            rows.append({"task": "sst2", "method": method, "seed": seed, "final": score, "run_seconds": 10 + seed})
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    scores, seconds = paired_verdict.read(str(path))
    (task, r), (pooled, p) = paired_verdict.table(scores, "new", "old")
    diffs = [10.0, 2.0, -1.0, 10.0]
    assert task == "sst2" and r["n"] == 4 and r["mean"] == pytest.approx(5.25)
    assert r["std"] == pytest.approx(math.sqrt(sum((d - 5.25) ** 2 for d in diffs) / 3))
    assert (r["wins"], r["losses"], r["ties"]) == (3, 1, 0) and r["low"] < r["mean"] < r["high"]
    assert r["detectable"] > r["high"] - r["mean"]  # wider than the interval's half: power 80%, not 50%
    assert p == r and seconds["new"] == [10, 11, 12, 13]
    assert "**new − old**" in paired_verdict.markdown(scores, "new - old")
