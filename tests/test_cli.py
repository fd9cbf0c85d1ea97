"""`tb-hf analyze` on a tiny model saved to a temporary folder."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import BertConfig, BertModel

from tb_hf import cli
from tb_hf.config import TempBalanceArguments
from tb_hf.spectral import analyze


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    return path


def test_analyze_writes_table_equal_to_spectral_core(saved_model, tmp_path, capsys):
    cli.main(["analyze", str(saved_model), "--out", str(tmp_path), "--tb_xmin_method", "ks", "--tb_min_evals", "20"])
    printed = capsys.readouterr().out
    assert "encoder.layer.1.output.dense.weight" in printed
    rows = list(csv.DictReader(open(tmp_path / "alpha.csv")))
    assert len(rows) == 12  # 2 blocks x (q, k, v, attention out, intermediate, output)
    assert {r["unit"] for r in rows} == {"encoder.layer.0", "encoder.layer.1"}
    model = BertModel.from_pretrained(saved_model)
    weights = {r["matrix"]: dict(model.named_parameters())[r["matrix"]] for r in rows}
    expected = analyze(weights, xmin_method="ks", min_evals=20)
    for r in json.load(open(tmp_path / "alpha.json")):
        assert r["alpha"] == pytest.approx(expected[r["matrix"]].alpha, abs=1e-12)
    factors = {r["unit"]: float(r["factor"]) for r in rows}
    assert sorted(factors.values()) == pytest.approx([0.5, 1.5])  # linear map over two units


def test_analyze_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="Could not load"):
        cli.main(["analyze", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="model class"):
        cli.main(["analyze", str(tmp_path), "--model-class", "NoSuchClass"])
    with pytest.raises(ValueError, match="tb_mapping"):
        TempBalanceArguments(tb_mapping="cubic")
