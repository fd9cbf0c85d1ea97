"""The documentation: the site builds without a warning, and every Python example in it runs as shown.

* `test_mkdocs_build_strict`: ``mkdocs build --strict`` into a temporary folder. A broken link or anchor, a
  renamed function in an API page or a stale parameter name in a docstring is a warning, so it fails.
* `test_example`: every ```` ```python ```` block of README.md and docs/**/*.md, and of the docstrings that the
  API reference renders, run exactly as shown, each in a fresh temporary working folder. The preamble gives
  the block what a reader would already have:

  - the working folder holds tiny random models under the Hub ids the docs name (`HUB_MODELS`), so
    ``from_pretrained("roberta-base")`` loads the local folder ``./roberta-base``, offline;
  - the namespace holds ``model``, ``train``, ``dev``, ``args`` and ``tokenizer`` (`namespace`): by default a
    tiny RoBERTa sequence classifier and tokenized datasets; after ``<!-- docs-test: causal-lm -->`` (the line
    before the block; for a docstring, `DOCSTRING_SETUPS`) a tiny LLaMA with datasets of a ``text`` column;
  - on a machine without CUDA every ``TrainingArguments`` the block creates gets ``use_cpu=True`` (trl's
    ``SFTConfig`` defaults to bf16, which otherwise refuses to start on a CPU). Nothing else is changed.

  A block that cannot run on such a machine (it needs a GPU, several nodes) is fenced as ```` ```bash ```` or
  ```` ```text ````, never skipped.
* The docs point at nothing outside the repository, every ``docs/method.md, section N`` that the code cites
  exists, and every option appears in the options table of docs/training.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from tb_hf import TempBalanceArguments, TempBalanceConfig

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```(?P<lang>[^\s`]*)[^\n]*\n(?P<code>.*?)^```\s*$", re.M | re.S)
SETUP = re.compile(r"<!--\s*docs-test:\s*(?P<setup>[\w-]+)\s*-->\s*$")
SETUPS = ("classification", "causal-lm")


# --------------------------------------------------------------------------------------------------
# The site


def test_mkdocs_build_strict(tmp_path):
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (scripts/setup.sh installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, log[-5000:]
    site = tmp_path / "site"
    assert (site / "studies" / "mpnet-fewshot" / "index.html").is_file()  # the study write-ups are pages
    assert (site / "studies" / "mpnet-fewshot" / "scores.png").is_file()
    assert "tb_update_steps" in (site / "api" / "options" / "index.html").read_text()  # the generated table


# --------------------------------------------------------------------------------------------------
# The examples


def examples() -> list:
    """``pytest.param(path, line, setup, code)`` for every ```python block (line: the fence's, 1-based)."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match["lang"] not in ("python", "py"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            setup = m["setup"] if (m := SETUP.search(before)) else "classification"
            assert setup in SETUPS, f"{path.name}:{line}: unknown docs-test setup {setup!r}; known: {SETUPS}"
            rel = path.relative_to(ROOT).as_posix()
            found.append(pytest.param(rel, line, setup, match["code"], id=f"{rel}:{line}"))
    return found


#: Docstring examples that need the causal-lm setup, by (module file, qualified name).
DOCSTRING_SETUPS = {("tb_hf/trainer.py", "TempBalanceMixin"): "causal-lm"}
DOC_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def api_modules() -> list[Path]:
    """The modules whose docstrings the API reference (docs/api/*.md, ``::: tb_hf.X``) renders."""
    import tb_hf

    names = set()
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for ident in re.findall(r"^::: tb_hf\.(\w+)", page.read_text(), re.M):
            names.add(ident if (ROOT / "tb_hf" / f"{ident}.py").is_file() else tb_hf._EXPORTS[ident])
    return [ROOT / "tb_hf" / f"{name}.py" for name in sorted(names)]


def docstring_examples() -> list:
    """``pytest.param(path, line, setup, code)`` for every ```python block in a docstring of `api_modules`."""
    import ast
    import textwrap

    found = []
    for path in api_modules():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        nodes = [(tree, "")] + [
            (node, node.name)
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for node, name in nodes:
            if ast.get_docstring(node) is None:
                continue
            doc = node.body[0].value
            for match in DOC_FENCE.finditer(doc.value):
                line = doc.lineno + doc.value.count("\n", 0, match.start())
                setup = DOCSTRING_SETUPS.get((rel, name), "classification")
                code = textwrap.dedent(match["code"])
                found.append(pytest.param(rel, line, setup, code, id=f"{rel}:{line}"))
    return found


EXAMPLES = examples() + docstring_examples()


def test_examples_were_found():
    files = {p.values[0] for p in EXAMPLES}
    assert {"README.md", "docs/training.md", "tb_hf/trainer.py"} <= files, files
    for path in DOC_FILES:  # an indented or oddly fenced block would otherwise go untested without a word
        rel = path.relative_to(ROOT).as_posix()
        fences = len(re.findall(r"^\s*```(?:python|py)\b", path.read_text(), re.M))
        assert fences == sum(p.values[0] == rel for p in EXAMPLES), f"{rel}: a python block is not at column 0"
    assert len(EXAMPLES) >= 10, len(EXAMPLES)


VOCAB = 100


def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 .. w99`` (pad 0, bos 1, eos 2, unk 3), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


# Hidden size 64: every matrix has 64 eigenvalues, above the default tb_min_evals (50), so the docs' default
# options fit every block.
_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB)

#: Hub id -> builder of the tiny random model saved under that name in the working folder.
HUB_MODELS = {
    "roberta-base": lambda: tf.RobertaForSequenceClassification(
        tf.RobertaConfig(**_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64)
    ),
    "HuggingFaceTB/SmolLM2-135M": lambda: tf.LlamaForCausalLM(
        tf.LlamaConfig(**_SIZES, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    ),
}
SETUP_MODEL = {"classification": "roberta-base", "causal-lm": "HuggingFaceTB/SmolLM2-135M"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A folder holding every `HUB_MODELS` entry (weights, config and tokenizer) under its Hub id."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = tiny_tokenizer()
    for name, build in HUB_MODELS.items():
        torch.manual_seed(0)
        build().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def random_words(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{i}" for i in torch.randint(4, VOCAB, (12,), generator=g).tolist()) for _ in range(n)]


def namespace(setup: str, tokenizer) -> dict:
    """What a block finds defined: ``model``, ``train``, ``dev``, ``args``, ``tokenizer`` (see the module doc)."""
    from datasets import Dataset

    model_id = SETUP_MODEL[setup]
    if setup == "classification":
        model = tf.AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2)

        def data(n, seed):
            enc = tokenizer(random_words(n, seed), padding="max_length", max_length=12, truncation=True)
            labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
            return Dataset.from_dict({"input_ids": enc["input_ids"], "labels": labels})
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(model_id)

        def data(n, seed):
            return Dataset.from_dict({"text": random_words(n, seed)})

    args = TempBalanceConfig(
        output_dir="out", max_steps=4, per_device_train_batch_size=4, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    return {"__name__": "__docs_example__", "model": model, "train": data(16, 1), "dev": data(8, 2), "args": args,
            "tokenizer": tokenizer}  # fmt: skip


@pytest.fixture
def cpu_training_arguments(monkeypatch):
    """Without CUDA, every TrainingArguments (TempBalanceConfig, SFTConfig, ...) is created with use_cpu=True."""
    if torch.cuda.is_available():
        return
    post_init = tf.TrainingArguments.__post_init__

    def on_cpu(self):
        self.use_cpu = True
        post_init(self)

    monkeypatch.setattr(tf.TrainingArguments, "__post_init__", on_cpu)


@pytest.mark.parametrize("path, line, setup, code", EXAMPLES)
def test_example(path, line, setup, code, hub, tmp_path, monkeypatch, cpu_training_arguments):
    for name in HUB_MODELS:  # the working folder looks like a Hub cache: ./roberta-base, ./HuggingFaceTB/...
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(hub / name, target_is_directory=True)
    for model_id in re.findall(r"from_pretrained\(\s*[\"']([^\"']+)[\"']", code):
        assert model_id in HUB_MODELS, f"{path}:{line} loads {model_id!r}: add a tiny model for it to HUB_MODELS"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = namespace(setup, tiny_tokenizer())
    # Blank lines before the code, so a traceback names the line of the .md file.
    exec(compile("\n" * line + code, str(ROOT / path), "exec"), ns)  # noqa: S102 - the docs' own examples


# --------------------------------------------------------------------------------------------------
# References


def _text_files():
    for base in ("tb_hf", "tests", "scripts", "recipes", "docs", "studies"):
        for path in (ROOT / base).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml", ".sh") and "__pycache__" not in path.parts:
                yield path
    yield from (ROOT / "README.md", ROOT / "mkdocs.yml")


def test_nothing_points_outside_the_repository():
    """The method is docs/method.md: no code or page cites a document outside the repository."""
    this = Path(__file__).resolve()
    outside = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _text_files()
        if p.resolve() != this
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "ALGORITHM.md" in line or "shared/docs" in line
    ]
    assert not outside, outside


def test_cited_method_sections_exist():
    """Every ``docs/method.md, section N`` (or ``sections N-M``) in the code names a numbered section of it."""
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "method.md").read_text(), re.M)}
    cited = {}
    for path in _text_files():
        for a, b in re.findall(r"docs/method\.md`*, sections? (\d+)(?:-(\d+))?", path.read_text()):
            for n in range(int(a), int(b or a) + 1):
                cited.setdefault(n, path.relative_to(ROOT).as_posix())
    assert cited, "no citation of docs/method.md found"
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited but not in docs/method.md: {missing}; sections there: {sorted(sections)}"


def test_every_option_is_in_the_training_guide():
    text = (ROOT / "docs" / "training.md").read_text()
    table = text[text.index("## Options") :]
    missing = [f.name for f in dataclasses.fields(TempBalanceArguments) if f"`{f.name}`" not in table]
    assert not missing, f"add these options to the table in docs/training.md: {missing}"


def test_readme_is_short_and_starts_with_the_quick_start():
    """The README's first commands are the two a newcomer runs, and it stays a front page (<= 200 lines)."""
    text = (ROOT / "README.md").read_text()
    first = FENCE.search(text)
    commands = [line.split("#")[0].strip() for line in first["code"].splitlines()]
    assert first["lang"] == "bash" and commands == ["bash scripts/run.sh", "bash scripts/test.sh"], first[0]
    assert len(text.splitlines()) <= 200, len(text.splitlines())


def test_relative_links_resolve_in_the_checkout():
    """Links of README.md (not part of the site), docs/ and the study write-ups also work on GitHub / on disk."""
    pages = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "studies").rglob("README.md")),
    ]
    broken = []
    for page in pages:
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if path and not re.match(r"^[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
