"""plugins/xt-hf: a tiny BERT, saved locally with a tokenizer trained here, fine-tuned through ``datasets``.

Nothing is downloaded: the model is a ``BertConfig`` (hidden size 32, 2 layers) written by ``save_pretrained``
into a temporary directory, beside a WordPiece tokenizer trained with ``tokenizers`` on the test's own texts;
``HF_HUB_OFFLINE=1`` and ``HF_HOME`` in a temporary directory. The CLI test pip-installs the plugin into a venv
that sees this environment's packages (``conftest.overlay_venv``) and drives the real ``xt`` there.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import overlay_venv

from xt_training import registry
from xt_training.errors import ConfigError
from xt_training.runs import export_run

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "xt-hf"
POSITIVE, NEGATIVE = "good great fun excellent lovely".split(), "bad awful boring terrible dull".split()
FILLER = "the movie was a plot and film it very".split()


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["pos", "neg"])
    words = rng.sample(FILLER, rng.randint(2, 6)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words), label


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """``(directory of a tiny pretrained BERT and its tokenizer, folder of data files, environment)``."""
    root = tmp_path_factory.mktemp("hf")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home"), "HF_DATASETS_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.syspath_prepend(str(PLUGIN))
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
        from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

        rng = random.Random(0)
        rows = [review(rng) for _ in range(100)]
        data = root / "data"
        data.mkdir()
        with open(data / "train.csv", "w", newline="") as f:
            csv.writer(f).writerows([("text", "sentiment"), *rows])
        (data / "texts.txt").write_text("the movie was good\nawful boring film\n")
        tagged = [
            {"words": t.split(), "tags": ["O" if w in FILLER else "SENT" for w in t.split()]} for t, _ in rows
        ]
        (data / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))

        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokenizer.train_from_iterator(
            [t for t, _ in rows], trainers.WordPieceTrainer(vocab_size=120, special_tokens=special)
        )
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        model_dir = root / "tiny-bert"
        PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        ).save_pretrained(model_dir)  # fmt: skip
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        )  # fmt: skip
        BertModel(config).save_pretrained(model_dir)  # a body without a head, as bert-base-uncased
        yield model_dir, data, env


@pytest.fixture
def plugin(hf, monkeypatch):
    """The registry with xt-hf loaded from its source, in this process."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    registry.load(["xt_hf.plugin"], environ={"XT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    yield
    registry.reset()


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """The python of a venv with xt-hf pip-installed from a copy of plugins/xt-hf."""
    root = tmp_path_factory.mktemp("hf-venv")
    python, _ = overlay_venv(root / "venv")
    source = shutil.copytree(PLUGIN, root / "xt-hf")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q", "install",
         "--no-deps", "--no-build-isolation", str(source)],
        check=True, timeout=300,
    )  # fmt: skip
    return python


def xt(python: Path, *args: str, cwd: Path, env: dict, code: int = 0) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # this checkout's xt-training
    out = subprocess.run(
        [python, "-m", "xt_training", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == code, f"xt {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_a_tiny_bert_fine_tunes_on_a_csv_and_its_run_predicts_raw_text(hf, python, tmp_path, plugin):
    model_dir, data, env = hf
    xt(
        python, "run", "--model", f"hf:{model_dir}", "--data", "hf-dataset", "--data-opt", f"train_file={data / 'train.csv'}",
        "--data-opt", "label=sentiment", "--data-opt", f"tokenizer={model_dir}", "--batch-size", "16",
        "--epochs", "8", "--lr", "0.003", "-q", "--save-dir", "run", cwd=tmp_path, env=env,
    )  # fmt: skip
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["source"] == "xt-hf 0.1.0" and config["info"]["classes"] == ["neg", "pos"]
    assert config["model"]["name"] == "hf" and config["model"]["options"]["name"] == str(model_dir)  # hf:DIR
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train/loss"] < history[0]["train/loss"] - 0.2
    assert max(epoch["val/accuracy"] for epoch in history) >= 0.8  # the sentiment words are learnt
    assert (run / "tokenizer.json").is_file()  # xt predict reads raw text with it

    xt(python, "predict", "run", "--input", str(data / "texts.txt"), "-o", "p.csv", cwd=tmp_path, env=env)
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    predicted = torch.tensor([[float(r["p_neg"]), float(r["p_pos"])] for r in rows])

    # the reference: transformers' own model and tokenizer with the checkpoint's weights, no xt-training
    from transformers import AutoTokenizer, BertForSequenceClassification

    from xt_training import load_model

    reference = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    reference.load_state_dict(torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"])
    reference.eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    texts, padded = (data / "texts.txt").read_text().splitlines(), {"padding": True, "return_tensors": "pt"}
    inputs = tokenizer(texts, **padded)
    with torch.no_grad():
        expected = reference(**inputs).logits
        loaded = load_model(run)(**inputs).logits
    torch.testing.assert_close(loaded, expected)
    torch.testing.assert_close(predicted, expected.softmax(1))
    out = xt(python, "export", "run", "--format", "hf", cwd=tmp_path, env=env)
    assert out.stdout.strip() == str(Path("run") / "hf")
    exported = BertForSequenceClassification.from_pretrained(run / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            exported(**AutoTokenizer.from_pretrained(run / "hf")(texts, **padded)).logits, expected
        )
    assert exported.config.id2label == {0: "neg", 1: "pos"}
    pretrained = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).bert.embeddings
    assert not torch.equal(
        pretrained.word_embeddings.weight, reference.bert.embeddings.word_embeddings.weight
    )


@pytest.mark.slow
def test_a_hub_name_that_needs_a_download_is_one_line(hf, python, tmp_path):
    model_dir, data, env = hf
    out = xt(
        python, "run", "--model", "hf:bert-base-uncased", "--data", "hf-dataset",
        "--data-opt", f"train_file={data / 'train.csv'}", "--data-opt", "label=sentiment",
        "--data-opt", f"tokenizer={model_dir}", "-q", cwd=tmp_path, env=env, code=2,
    )  # fmt: skip
    assert "Traceback" not in out.stderr
    assert (
        "'bert-base-uncased' would have to be downloaded from the Hugging Face hub (bert-base-uncased/config.json)"
        in out.stderr
    )
    assert "HF_HOME" in out.stderr and "HF_HUB_OFFLINE" in out.stderr


@pytest.mark.parametrize(
    ("task", "file", "options"),
    [
        ("sequence-classification", "train.csv", {"label": "sentiment"}),
        ("token-classification", "tokens.jsonl", {"text": "words", "label": "tags"}),
        ("causal-lm", "train.csv", {}),
    ],
)
def test_each_tasks_loss_is_the_models_own(hf, plugin, task, file, options):
    """The run's loss on the logits, beside the ``.loss`` the model computes when given the labels."""
    model_dir, data, _ = hf
    built = registry.create_data(
        "hf-dataset",
        task=task,
        train_file=str(data / file),
        tokenizer=str(model_dir),
        batch_size=8,
        **options,
    )
    model = registry.create(
        "model",
        "hf",
        **{k: v for k, v in built.info.items() if k in ("task", "num_classes", "classes", "tokenizer")},
    )
    loss_fn = registry.create("loss", built.loss)
    batch = dict(next(iter(built.loaders["train"])))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    assert (batch["attention_mask"] == 0).any()  # padded to the batch's longest example
    y_pred, y = built.forward_fn(model, batch)
    torch.testing.assert_close(loss_fn(y_pred, y), model(**batch).loss)


def test_export_formats_of_plugins_are_listed_in_the_error(plugin, tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown export format 'hff'; choose one of: onnx, pt2, torchscript, hf$"
    ):
        export_run(tmp_path, format="hff")


def test_bad_options_are_one_line(hf, plugin, tmp_path):
    model_dir, data, _ = hf
    with pytest.raises(ConfigError, match=r"has no column 'review'; its columns: text, sentiment"):
        registry.create_data(
            "hf-dataset",
            train_file=str(data / "train.csv"),
            text="review",
            label="sentiment",
            tokenizer=str(model_dir),
        )
    with pytest.raises(ConfigError, match=r"reads either local files .* or a hub data set"):
        registry.create_data("hf-dataset", tokenizer=str(model_dir))
    with pytest.raises(ConfigError, match=r"'\./nowhere': no such directory"):
        registry.create("model", "hf", name="./nowhere")
    with pytest.raises(ConfigError, match=r"model 'hf' needs the pretrained model"):
        registry.create("model", "hf")
