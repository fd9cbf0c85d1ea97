"""The GPU MiniLM study's script: choose_lr.py picks the learning rate on held-out training examples only. Pytest puts
this folder on sys.path (the script runs by path)."""

from __future__ import annotations

import csv

import choose_lr


def test_choose_lr_script(tmp_path, capsys):
    """choose_lr.py: the rate with the best mean final holdout score over the (task, seed) runs finished at
    every rate, never one chosen on dev."""
    rows = [  # 1e-4 is best on the pairs complete at every rate; 3e-4 would look best only for its missing rte run
        ("sst2", 1, 1e-4, 0.80), ("sst2", 1, 3e-4, 0.82), ("sst2", 1, 3e-5, 0.70),
        ("sst2", 2, 1e-4, 0.84), ("sst2", 2, 3e-4, 0.80), ("sst2", 2, 3e-5, 0.72),
        ("rte", 1, 1e-4, 0.60), ("rte", 1, 3e-5, 0.58),
    ]  # fmt: skip
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "seed", "learning_rate", "final", "eval_split"])
        writer.writerows([(*row, "train_holdout") for row in rows])
    assert choose_lr.main([str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "0.0001"
    assert "82.00" in captured.err and "81.00" in captured.err  # 1e-4 and 3e-4 over the 2 complete sst2 seeds

    other = tmp_path / "other.csv"
    other.write_text("task,seed,final\nsst2,1,0.5\n")
    assert choose_lr.main([str(other)]) == 2
    assert "no column(s) ['eval_split', 'learning_rate']" in capsys.readouterr().err

    path.write_text(path.read_text().replace("train_holdout", "validation", 1))
    assert choose_lr.main([str(path)]) == 2
    assert "not only on held-out training examples" in capsys.readouterr().err
