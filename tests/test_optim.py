"""tb_hf.optim: TempBalance's param groups, with and without a depth profile (tb_llrd_decay), against LLRD's."""

from __future__ import annotations

import pytest
import torch

from tb_hf import TempBalanceTrainer, partition_model
from tb_hf.baselines import LLRDTrainer
from tb_hf.optim import build_param_groups, create_tempbalance_optimizer, tempbalance_param_groups, trainer_decay_names
from tb_hf.testing import ARCHS, Recorder, dataset_for, tiny_training_args


def _names(model, group) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in group["params"]]


def test_without_a_depth_profile_the_layout_is_outside_first_then_each_unit():
    model = ARCHS["bert"][0]()
    groups = tempbalance_param_groups(model, lr=1e-3, weight_decay=0.1)
    assert [g["tb_unit"] for g in groups] == [None, None] + ["bert.encoder.layer.0"] * 2 + ["bert.encoder.layer.1"] * 2
    assert {g["lr"] for g in groups} == {g["tb_base_lr"] for g in groups} == {1e-3}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] * 3 == [g["tb_base_wd"] for g in groups]
    assert groups[0]["tb_groups"] == {"unit": "block", "llrd_decay": 1.0, "head_lr_ratio": 1.0,
                                      "embeddings_lr_ratio": 1.0}  # fmt: skip
    assert any("embeddings" in n for n in _names(model, groups[0])) and any(
        "classifier" in n for n in _names(model, groups[0])
    )


def test_depth_profile_gives_each_block_its_decayed_base_rate():
    model = ARCHS["bert"][0]()  # 2 blocks: block 1 at depth 0, block 0 at depth 1, embeddings at depth 2
    groups = tempbalance_param_groups(model, lr=1e-3, weight_decay=0.1, llrd_decay=0.5)
    by = [(g["tb_unit"], g["lr"], g["tb_base_lr"], g["weight_decay"]) for g in groups]
    assert by == [
        (None, 1e-3, 1e-3, 0.1),  # pooler and classifier (after the blocks): the base schedule, group 0
        (None, 1e-3, 1e-3, 0.0),
        (None, 2.5e-4, 2.5e-4, 0.1),  # embeddings: 0.5^2
        (None, 2.5e-4, 2.5e-4, 0.0),
        ("bert.encoder.layer.0", 5e-4, 5e-4, 0.1),  # 0.5^1
        ("bert.encoder.layer.0", 5e-4, 5e-4, 0.0),
        ("bert.encoder.layer.1", 1e-3, 1e-3, 0.1),  # the top block: 0.5^0
        ("bert.encoder.layer.1", 1e-3, 1e-3, 0.0),
    ]
    assert groups[0]["tb_groups"] == {"unit": "block", "llrd_decay": 0.5, "head_lr_ratio": 1.0,
                                      "embeddings_lr_ratio": 1.0}  # fmt: skip
    assert all("pooler" in n or "classifier" in n for n in _names(model, groups[0]) + _names(model, groups[1]))
    assert all("embeddings" in n for n in _names(model, groups[2]) + _names(model, groups[3]))
    # matrix units take their block's depth
    matrix = build_param_groups(
        model, partition_model(model, "matrix"), learning_rate=1e-3, weight_decay=0.1,
        decay_parameter_names=trainer_decay_names(model), llrd_decay=0.5,
    )  # fmt: skip
    rates = {g["tb_unit"]: g["tb_base_lr"] for g in matrix if g["tb_unit"]}
    assert rates["bert.encoder.layer.0.attention.self.query"] == 5e-4
    assert rates["bert.encoder.layer.1.output.dense"] == 1e-3
    with pytest.raises(ValueError, match=r"llrd_decay must be a finite number in \(0, 1\]"):
        tempbalance_param_groups(model, lr=1e-3, llrd_decay=1.5)


NO_PASS = dict(tb_update_steps=None, tb_min_evals=None)  # options of the spectral pass, which LLRD does not make


def _lrs_by_parameter(model, optimizer) -> dict[str, float]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.slow  # two short training runs
def test_depth_profile_with_a_constant_map_trains_exactly_like_llrd(tmp_path):
    """tb_llrd_decay=d with every α factor 1 (tb_lr_min = tb_lr_max = 1) is LLRD with decay d: the same learning rate
    for every parameter at every step, and the same weights after training."""

    class PerParameter(Recorder):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, model=None, **kwargs):
            self.steps.append(_lrs_by_parameter(model, optimizer))

    runs = {}
    for name in ("llrd", "tempbalance"):
        torch.manual_seed(0)
        model = ARCHS["bert"][0]()
        recorder = PerParameter()
        common = dict(max_steps=4, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
        if name == "llrd":
            args = tiny_training_args(tmp_path / name, **common, **NO_PASS)
            trainer = LLRDTrainer(model=model, args=args, train_dataset=dataset_for(model), llrd_decay=0.7,
                                  callbacks=[recorder])  # fmt: skip
        else:
            args = tiny_training_args(tmp_path / name, **common, tb_llrd_decay=0.7, tb_lr_min=1.0, tb_lr_max=1.0)
            trainer = TempBalanceTrainer(
                model=model, args=args, train_dataset=dataset_for(model), callbacks=[recorder]
            )
        trainer.train()
        runs[name] = (recorder.steps, model)
    (llrd_lrs, llrd_model), (tb_lrs, tb_model) = runs["llrd"], runs["tempbalance"]
    assert len(llrd_lrs) == len(tb_lrs) == 4
    for step_llrd, step_tb in zip(llrd_lrs, tb_lrs, strict=True):
        assert step_llrd.keys() == step_tb.keys() and step_llrd == pytest.approx(step_tb, rel=1e-12)
    assert len({round(v, 12) for v in llrd_lrs[-1].values()}) == 3  # three depths really differ
    for (name, a), b in zip(llrd_model.named_parameters(), tb_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow  # a short training run
def test_lr_is_base_times_depth_times_alpha_factor_times_schedule(tmp_path):
    torch.manual_seed(0)
    model = ARCHS["bert"][0]()
    recorder = Recorder()
    args = tiny_training_args(tmp_path, max_steps=4, learning_rate=1e-2, warmup_steps=2, tb_llrd_decay=0.8,
                              tb_update_steps="2", lr_scheduler_type="linear")  # fmt: skip
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model), callbacks=[recorder])
    trainer.train()
    depth = {None: 0, "bert.encoder.layer.0": 1, "bert.encoder.layer.1": 0}
    for step, groups in recorder.steps:
        schedule = step / 2 if step < 2 else (4 - step) / 2  # linear warmup over 2 steps, linear decay to 0 at 4
        for unit, lr, base, factor in groups:
            if unit is not None:
                assert base == pytest.approx(1e-2 * 0.8 ** depth[unit], rel=1e-12)
                assert lr == pytest.approx(base * factor * schedule, rel=1e-9)
    factors = {unit: factor for unit, _, _, factor in recorder.steps[-1][1] if unit}
    assert factors["bert.encoder.layer.0"] != factors["bert.encoder.layer.1"]  # α factors on top of the depth


def test_callback_refuses_an_optimizer_with_another_depth_profile(tmp_path):
    from transformers import Trainer

    from tb_hf import TempBalanceCallback

    model = ARCHS["bert"][0]()
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, llrd_decay=0.9)
    args = tiny_training_args(tmp_path)
    with pytest.raises(ValueError, match=r"built with llrd_decay=0.9, but the options in force say tb_llrd_decay=1.0"):
        Trainer(model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
                callbacks=[TempBalanceCallback()])  # fmt: skip # refused when the Trainer is made, not at train()
    optimizer = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3)  # the preset's decay is not built
    with pytest.raises(ValueError, match=r"tb_llrd_decay=0.9 \(tb_preset='llrd-alpha'\): build the optimizer"):
        Trainer(model=model, args=args, train_dataset=dataset_for(model), optimizers=(optimizer, None),
                callbacks=[TempBalanceCallback(preset="llrd-alpha")])  # fmt: skip


@pytest.mark.parametrize("trainer_cls", [LLRDTrainer, TempBalanceTrainer])
def test_the_optimizer_kwargs_lr_is_the_base_rate_as_with_a_plain_trainer(tmp_path, trainer_cls):
    from transformers import Trainer

    sgd = (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9})
    plain = Trainer(model=ARCHS["bert"][0](), args=tiny_training_args(tmp_path), optimizer_cls_and_kwargs=sgd)
    plain.create_optimizer()
    assert {g["lr"] for g in plain.optimizer.param_groups} == {1e-3}  # what a Trainer user expects
    kw = {"llrd_decay": 0.5} if trainer_cls is LLRDTrainer else {"tb_llrd_decay": 0.5}
    args = tiny_training_args(tmp_path, learning_rate=5e-5, **(NO_PASS if trainer_cls is LLRDTrainer else kw))
    trainer = trainer_cls(model=ARCHS["bert"][0](), args=args, optimizer_cls_and_kwargs=sgd,
                          **(kw if trainer_cls is LLRDTrainer else {}))  # fmt: skip
    trainer.create_optimizer()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert max(g["lr"] for g in trainer.optimizer.param_groups) == pytest.approx(1e-3)  # the top block and head
    assert min(g["lr"] for g in trainer.optimizer.param_groups if g["params"]) == pytest.approx(1e-3 * 0.5**2)


def test_llrd_refuses_what_it_would_silently_ignore(tmp_path):
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path, **NO_PASS)
    flat = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="need an optimizer with tb_hf's per-unit param groups"):
        LLRDTrainer(model=model, args=args, optimizers=(flat, None), llrd_decay=0.5)
    with pytest.raises(ValueError, match=r"LLRDTrainer trains tb_llrd_decay=0.9, and its arguments set tb_llrd_decay"):
        LLRDTrainer(model=model, args=tiny_training_args(tmp_path, tb_llrd_decay=0.5, **NO_PASS), llrd_decay=0.9)
    for bad in ("0.9", True, float("nan"), 1.5):
        with pytest.raises(ValueError, match=r"llrd_decay must be a finite number in \(0, 1\]"):
            LLRDTrainer(model=model, args=args, llrd_decay=bad)
    # An optimizer over LLRD's own groups is accepted.
    from tb_hf.baselines import llrd_param_groups

    own = torch.optim.AdamW(llrd_param_groups(model, learning_rate=1e-3, decay=0.5))
    assert LLRDTrainer(model=model, args=args, optimizers=(own, None), llrd_decay=0.5).optimizer is own


def test_llrd_refuses_an_optimizer_built_with_another_decay_and_a_config_of_another_profile(tmp_path):
    """Both trained something else than asked without a word (outside probe): 0.5 instead of 0.9, and a preset's α
    map dropped."""
    from tb_hf import TempBalanceConfig
    from tb_hf.baselines import llrd_param_groups

    model = ARCHS["bert"][0]()
    other = torch.optim.AdamW(llrd_param_groups(model, learning_rate=1e-3, decay=0.5))
    with pytest.raises(ValueError, match=r"built with llrd_decay=0.5, but the options in force say tb_llrd_decay=0.9"):
        LLRDTrainer(model=model, args=tiny_training_args(tmp_path, **NO_PASS), optimizers=(other, None),
                    llrd_decay=0.9)  # fmt: skip
    config = TempBalanceConfig(output_dir=str(tmp_path), tb_preset="llrd-alpha", report_to="none")
    with pytest.raises(ValueError, match=r"LLRDTrainer trains tb_preset='llrd', and its arguments set "
                                         r"tb_preset='llrd-alpha'"):  # fmt: skip
        LLRDTrainer(model=model, args=config)
    # the config's own decay is LLRD's when the trainer is given none (a search can set it per trial)
    trainer = LLRDTrainer(model=model, args=tiny_training_args(tmp_path, tb_llrd_decay=0.7, **NO_PASS))
    assert trainer.llrd_decay == 0.7


class _HeadFirst(torch.nn.Module):
    """A model that registers its head before its embeddings and blocks."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(16, 2)
        self.final_norm = torch.nn.LayerNorm(16)
        self.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(16, 16)) for _ in range(3))
        self.embed_tokens = torch.nn.Embedding(10, 16)


def test_depth_comes_from_the_blocks_and_what_a_module_is_not_registration_order():
    """A head registered before the blocks trained at the embeddings' rate (1e-3 × 0.5³; outside probe)."""
    from tb_hf.blocks import depths

    model = _HeadFirst()
    assert depths(model) == {
        "head.weight": 0, "head.bias": 0, "final_norm.weight": 0, "final_norm.bias": 0,
        "layers.0.0.weight": 2, "layers.0.0.bias": 2, "layers.1.0.weight": 1, "layers.1.0.bias": 1,
        "layers.2.0.weight": 0, "layers.2.0.bias": 0, "embed_tokens.weight": 3,
    }  # fmt: skip
    groups = tempbalance_param_groups(model, lr=1e-3, llrd_decay=0.5)
    lr = {n: g["lr"] for g in groups for n in _names(model, g)}
    assert lr["head.weight"] == lr["final_norm.weight"] == 1e-3 and lr["embed_tokens.weight"] == 1e-3 * 0.5**3


def test_depth_counts_per_stack_in_an_encoder_decoder():
    from tb_hf.blocks import depths

    model = ARCHS["t5"][0]()  # two stacks of 2 blocks, a shared embedding
    d = depths(model)
    q = "block.{}.layer.0.SelfAttention.q.weight"
    assert d["encoder." + q.format(1)] == d["decoder." + q.format(1)] == 0  # each stack's top block
    assert d["encoder." + q.format(0)] == d["decoder." + q.format(0)] == 1
    assert d["shared.weight"] == 2 and d["encoder.final_layer_norm.weight"] == 0


@pytest.mark.parametrize("decay", [__import__("numpy").float32(0.8), torch.tensor(0.8)])
def test_numeric_options_of_every_entry_point_become_python_numbers(tmp_path, decay):
    """A numpy or torch scalar reached the param groups, then trainer_state.json (not JSON serializable) or a
    checkpoint that weights-only torch.load refuses (outside probe)."""
    import json

    from tb_hf import TempBalanceCallback

    model = ARCHS["bert"][0]()
    opt = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=decay * 1e-3, weight_decay=decay / 10,
                                       llrd_decay=decay)  # fmt: skip
    assert all(type(g[k]) is float for g in opt.param_groups for k in ("lr", "tb_base_lr", "weight_decay"))
    assert type(TempBalanceCallback(llrd_decay=decay).user_options.tb_llrd_decay) is float
    for name, trainer_cls, kw, options in [
        ("llrd", LLRDTrainer, {"llrd_decay": decay}, NO_PASS),
        ("tb", TempBalanceTrainer, {}, {"tb_llrd_decay": decay, "tb_lr_min": decay * 0.75}),
    ]:
        args = tiny_training_args(tmp_path / name, save_strategy="steps", save_steps=2, **options)
        trainer_cls(model=ARCHS["bert"][0](), args=args, train_dataset=dataset_for(model), **kw).train()
        state = json.loads((tmp_path / name / "checkpoint-2" / "trainer_state.json").read_text())
        assert state["log_history"]
        resumed = trainer_cls(model=ARCHS["bert"][0](), args=args, train_dataset=dataset_for(model), **kw)
        resumed.train(resume_from_checkpoint=str(tmp_path / name / "checkpoint-2"))  # weights-only torch.load works


def test_llrd_resumed_with_another_decay_is_refused(tmp_path):
    """A checkpoint written with llrd_decay=0.9 continued at 0.9's rates when resumed with 0.5, without a word."""
    model = ARCHS["bert"][0]()
    args = tiny_training_args(tmp_path, save_strategy="steps", save_steps=2, **NO_PASS)
    LLRDTrainer(model=model, args=args, train_dataset=dataset_for(model), llrd_decay=0.9).train()
    again = LLRDTrainer(model=ARCHS["bert"][0](), args=args, train_dataset=dataset_for(model), llrd_decay=0.5)
    with pytest.raises(ValueError, match=r"written with tb_llrd_decay=0.9 \(now 0.5\)"):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize("preset", ["tempbalance", "llrd"])
def test_head_and_embeddings_multipliers_apply_to_every_profile_and_every_entry_point(tmp_path, preset):
    """The head's rate relative to the top block (LoRA+'s idea for B) and a multiplier on the embeddings', through
    the config, the callback's optimizer and create_tempbalance_optimizer alike."""
    from tb_hf import TempBalanceConfig
    from tb_hf.blocks import positions

    model = ARCHS["bert"][0]()
    kind = {n: p.kind for n, p in positions(model).items()}
    decay = 0.5 if preset == "llrd" else 1.0
    args = TempBalanceConfig(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        tb_preset=preset,
        tb_head_lr_ratio=4.0,
        tb_embeddings_lr_ratio=0.1,
        **({"tb_llrd_decay": decay} if preset == "llrd" else {}),
    )
    trainer = TempBalanceTrainer(model=model, args=args, train_dataset=dataset_for(model))
    trainer.create_optimizer()
    direct = create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, llrd_decay=decay, head_lr_ratio=4.0,
                                          embeddings_lr_ratio=0.1)  # fmt: skip
    for optimizer in (trainer.optimizer, direct):
        lr = _lrs_by_parameter(model, optimizer)
        assert lr["classifier.weight"] == lr["bert.pooler.dense.weight"] == pytest.approx(4e-3)  # the head: 4x
        assert kind["bert.embeddings.LayerNorm.weight"] == "embeddings"
        assert lr["bert.embeddings.word_embeddings.weight"] == pytest.approx(1e-3 * decay**2 * 0.1)
        assert lr["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-3)  # the top block unchanged
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"tb_head_lr_ratio must be a finite number in \(0, 100\]"):
            TempBalanceConfig(output_dir=str(tmp_path), tb_head_lr_ratio=bad)


def test_a_vision_language_model_counts_depth_per_stack():
    """A tiny LLaVA (CLIP vision tower + LLaMA language model): each stack's top block at depth 0, each stack's
    embeddings one below its first block, the projector between them at the top."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from tb_hf.blocks import block_stacks, find_blocks, positions

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)  # fmt: skip
    text = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=100))
    stacks = block_stacks([path for path, _ in find_blocks(model)])
    assert [len(s) for s in stacks] == [3, 2]
    pos = positions(model)
    vision_top = stacks[0][-1] + ".mlp.fc1.weight"
    text_top = stacks[1][-1] + ".mlp.up_proj.weight"
    assert pos[vision_top].depth == pos[text_top].depth == 0
    assert pos[stacks[0][0] + ".mlp.fc1.weight"].depth == 2 and pos[stacks[1][0] + ".mlp.up_proj.weight"].depth == 1
    embeddings = {n: p for n, p in pos.items() if p.kind == "embeddings"}
    assert {p.depth for n, p in embeddings.items() if "vision" in n} == {3}
    assert {p.depth for n, p in embeddings.items() if "embed_tokens" in n} == {2}
    assert all(p.kind == "head" and p.depth == 0 for n, p in pos.items() if "multi_modal_projector" in n)


def test_a_list_of_single_layers_is_not_a_stack_of_blocks():
    """Per-codebook embeddings and several heads in a ModuleList were counted as stacks of blocks: embed_tokens.2 and
    lm_heads.2 at the top rate, lm_heads.0 balanced as a 'block' (outside probe)."""
    import transformers as tf

    from tb_hf.blocks import find_blocks, positions

    cfg = tf.MusicgenDecoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   ffn_dim=64, num_codebooks=3)  # fmt: skip
    model = tf.MusicgenForCausalLM(cfg)
    assert [p for p, _ in find_blocks(model)] == ["model.decoder.layers.0", "model.decoder.layers.1"]
    pos = positions(model)
    assert {pos[f"model.decoder.embed_tokens.{i}.weight"].kind for i in range(3)} == {"embeddings"}
    assert {pos[f"lm_heads.{i}.weight"] for i in range(3)} == {pos["lm_heads.0.weight"]}  # one place: the head
    assert pos["lm_heads.0.weight"].kind == "head"


def test_weight_decay_and_learning_rate_of_the_groups_are_checked():
    """weight_decay=nan trained NaN weights (torch's own check does not see per-group values; outside probe)."""
    model = ARCHS["bert"][0]()
    for bad in (float("nan"), -1.0, "0.1"):
        with pytest.raises(ValueError, match="weight_decay must be a finite number"):
            create_tempbalance_optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=bad)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        create_tempbalance_optimizer(model, torch.optim.AdamW, lr=float("nan"))


def test_a_list_of_mlp_heads_beside_transformer_blocks_is_not_a_stack():
    """Multi-task heads nn.Sequential(Linear, Tanh, Linear) x 3 beside a BERT trained at x0.25/x0.5/x1 under LLRD 0.5
    and were balanced as units (second outside probe)."""
    from tb_hf.blocks import find_blocks, positions

    model = ARCHS["bert"][0]()
    model.heads = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)) for _ in range(3)
    )
    assert [p for p, _ in find_blocks(model)] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    pos = positions(model)
    assert {pos[f"heads.{i}.0.weight"] for i in range(3)} == {pos["classifier.weight"]}  # all at the top
