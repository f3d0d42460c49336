"""The ``xt`` command line for daily use, as a user meets it: the real console script in a subprocess.

``xt run --print-config`` and ``--dry-run``, shell completion, ``xt env``, ``xt show``/``xt runs``,
``xt info``'s option descriptions, and the order of what a run prints.
"""

from __future__ import annotations

import json
import platform
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import ENV, xt, xt_reporting_imports

from xt_training import registry, runs
from xt_training.config import default_config

TINY = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200"]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- xt run --print-config / --dry-run ---------------------------------------------------------------------
def test_print_config_prints_every_default_and_is_a_config_to_run_from(tmp_path):
    out = xt("run", *TINY, "--optimizer", "sgd", "--print-config", cwd=tmp_path)
    config = json.loads(out.stdout)
    assert (config["epochs"], config["seed"], config["precision"]) == (10, 0, "32")
    # the factories' defaults, and what the data tells the model, filled in
    assert config["optimizer"]["resolved"]["momentum"] == 0
    model = config["model"]["resolved"]
    assert (model["in_features"], model["num_classes"]) == (20, 3)
    assert config["loss"]["name"] == "cross-entropy" and "accuracy" in config["metrics"]
    assert files_under(tmp_path) == []  # nothing written, no run directory
    (tmp_path / "exp.json").write_text(out.stdout)
    again = xt("run", "--config", "exp.json", "--print-config", cwd=tmp_path)
    assert json.loads(again.stdout) == config


def test_dry_run_trains_one_batch_of_each_pass_and_writes_nothing(tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    # the temporary run directory is gone afterwards too (torch keeps its compiler cache elsewhere)
    env = {**ENV, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torch-cache")}
    args = [*TINY, "--logger", "csv", "--callback", "early-stopping", "--dry-run"]
    out = xt("run", *args, cwd=work, env=env)
    assert files_under(work) == [] and files_under(tmp) == []
    lines = out.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("epoch 1/1"))) + 1 :]
    assert [line.split()[0] for line in table[1:4]] == ["train", "val", "test"]
    assert "nothing written" in lines[-1]
    # a mistake shows in the dry run as in the real one
    bad = xt("run", *TINY, "--monitor", "val/acc", "--dry-run", cwd=work, env=env, code=2)
    assert "monitor 'val/acc' is not a value of this run" in bad.stderr
    assert files_under(work) == [] and files_under(tmp) == []


# --- shell completion ---------------------------------------------------------------------------------------
def complete(words: str, shell: str, tmp_path: Path) -> str:
    """What ``xt`` answers the shell that completes the last of ``words`` (click's protocol)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**ENV, "_XT_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out, imported = xt_reporting_imports(env=env, cwd=tmp_path)
    assert imported == "[]"  # a completion is as fast as `xt list`
    return out


def test_completion_scripts_and_registered_names(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        assert f"_XT_COMPLETE={shell}_complete" in xt("completion", shell, cwd=tmp_path).stdout
    assert complete("xt run --model m", "bash", tmp_path).split() == ["plain,mlp"]
    assert "plain,top2=top-k-accuracy" in complete("xt run --metric top2=top", "bash", tmp_path).split()
    assert "plain,--model-opt" in complete("xt run --mod", "bash", tmp_path).split()
    assert "plain,completion" in complete("xt ", "bash", tmp_path).split()
    assert "plain,rnn-tagger" in complete("xt info model ", "bash", tmp_path).split()
    # zsh shows each name's description beside it
    assert "multi-layer perceptron" in complete("xt run --model m", "zsh", tmp_path)


# --- xt env -----------------------------------------------------------------------------------------------------
def test_env_says_what_a_bug_report_needs(tmp_path):
    env = {**ENV, "TORCH_HOME": str(tmp_path / "hub"), "HF_TOKEN": "do-not-print", "UNRELATED": "x"}
    out = xt("env", cwd=tmp_path, env=env).stdout
    assert f"torch: {torch.__version__}" in out and f"python: {platform.python_version()}" in out
    assert "devices:\n  cpu: " in out and f"  click {metadata.version('click')}" in out
    assert f"TORCH_HOME={tmp_path / 'hub'}" in out
    assert "do-not-print" not in out and "UNRELATED" not in out
    report = json.loads(xt("env", "--json", cwd=tmp_path, env=env).stdout)
    assert (
        report["torch"]["version"] == torch.__version__ and "HF_TOKEN" not in report["environment_variables"]
    )


# --- xt show / xt runs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> Path:
    """Three real 2-epoch runs of `xt run`'s configuration (made in this process: fast) under DIR/runs."""
    root = tmp_path_factory.mktemp("runs")
    for lr in (0.1, 0.001, 0.01):
        config = {
            **default_config(),
            "model": {"name": "mlp", "options": {}},
            "data": {"name": "synthetic-classification", "options": {"n_samples": 200}},
            "optimizer": {"name": "adam", "options": {"lr": lr}},
            "epochs": 2,
        }
        runs.train(config, root / "runs" / f"lr{lr}", quiet=True)
    return root


def best_val_loss(run: Path) -> float:
    return min(row["val/loss"] for row in json.loads((run / "history.json").read_text()))


def test_runs_lists_the_runs_best_first_and_sorts_by_a_column(three_runs):
    lines = xt("runs", cwd=three_runs).stdout.splitlines()
    assert lines[0].split() == ["run", "status", "epochs", "monitor", "best", "at", "started", "time"]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == sorted(listed, key=lambda run: best_val_loss(three_runs / run))  # val/loss: lowest first
    assert len(listed) == 3 and all(
        line.split()[1:4] == ["completed", "2/2", "val/loss"] for line in lines[1:]
    )
    by_name = xt("runs", "runs", "--sort", "run", cwd=three_runs).stdout.splitlines()[1:]
    assert [line.split()[0] for line in by_name] == ["runs/lr0.001", "runs/lr0.01", "runs/lr0.1"]
    table = xt("runs", "runs/lr0.1", "runs/lr0.01", "--compare", cwd=three_runs).stdout
    assert table.splitlines()[0].split() == ["runs/lr0.1", "runs/lr0.01"]
    assert "optimizer.resolved.lr" in table and "model.name" not in table  # the differences only
    assert re.search(r"\n  val/loss +\d\.\d{4} +\d\.\d{4}\n", table)  # the values at each best epoch


def test_show_leads_with_the_result_and_prints_json(three_runs):
    run = three_runs / "runs" / "lr0.1"
    text = xt("show", str(run), cwd=three_runs).stdout
    history = json.loads((run / "history.json").read_text())
    best = min(history, key=lambda row: row["val/loss"])
    assert text.splitlines()[0].startswith(f"run {run}  (completed, 2 of 2 epochs, started ")
    assert text.splitlines()[1] == f"best: val/loss {best['val/loss']:.4f} (min) at epoch {best['epoch']}"
    assert f"best {run / 'checkpoints' / 'best.pt'}" in text.splitlines()[2]
    assert text.index("history (history.json") < text.index("configuration (config.json)")
    shown = json.loads(xt("show", str(run), "--json", cwd=three_runs).stdout)
    assert shown["best"] == {"epoch": best["epoch"], "value": best["val/loss"]}
    assert shown["status"] == "completed" and shown["history"] == history
    assert shown["configuration"]["optimizer"]["options"] == {"lr": 0.1}


# --- xt info: each option described -------------------------------------------------------------------------
def test_info_shows_each_options_description(tmp_path):
    lines = xt("info", "model", "mlp", cwd=tmp_path).stdout.splitlines()
    hidden = next(i for i, line in enumerate(lines) if line.split()[:1] == ["hidden"])
    assert (
        lines[hidden + 1].strip()
        == "the sizes of the hidden layers, one Linear-ReLU block each, e.g. (256, 128)."
    )
    sgd = xt("info", "optimizer", "sgd", cwd=tmp_path).stdout  # torch's own docstring
    assert re.search(r"\n    lr .*\n +learning rate \(default: 1e-3\)\n", sgd)
    described = json.loads(xt("info", "callback", "early-stopping", "--json", cwd=tmp_path).stdout)
    assert (
        described["options"]["patience"]["description"]
        == "evaluations without improvement before the run stops."
    )


def test_every_built_in_option_has_a_description():
    """Models, data sets, losses, optimizers, schedulers, loggers and callbacks (the metrics' live in metrics.py)."""
    reg = registry.Registry(environ={registry.DISABLE_AUTOLOAD_ENV: "1"})  # the built-ins alone
    undescribed = [
        f"{kind} {name}: {option}"
        for kind in registry.KINDS
        if kind != "metric"
        for name in reg.names(kind)
        for option, spec in reg.info(kind, name)["options"].items()
        if not spec["description"]
    ]
    assert undescribed == []


def test_option_docs_reads_google_torch_and_sphinx_docstrings():
    def google(*, a, b, c, d):
        """Summary.

        Args:
            a, b (int, optional): both, described
                over two lines (``x`` and :class:`~torch.Tensor`).
            c: see :func:`f`.

        Returns:
            d: not a parameter
        """

    def sphinx(a, d):
        """Summary.

        :param a: the a,
            continued.
        :param int d: the d.
        :returns: nothing
        """

    both = "both, described over two lines (x and torch.Tensor)."
    assert registry.option_docs(google) == {"a": both, "b": both, "c": "see f."}
    assert registry.option_docs(sphinx) == {"a": "the a, continued.", "d": "the d."}


# --- the order of what a run prints ---------------------------------------------------------------------------
def test_a_callbacks_message_follows_its_epochs_table_and_the_fast_path_is_said_once_on_stderr(tmp_path):
    # min_delta: no epoch after the first improves, so early stopping stops the run after epoch 2
    stop = ["--callback", "early-stopping", "--callback-opt", "early-stopping.min_delta=1000"]
    out = xt("run", *TINY, "--epochs", "5", *stop, "--callback-opt", "early-stopping.patience=1",
             "--save-dir", "r", cwd=tmp_path)  # fmt: skip
    lines = out.stdout.splitlines()
    stopped = next(i for i, line in enumerate(lines) if line.startswith("early stopping:"))
    table = next(i for i, line in enumerate(lines) if line.startswith("epoch 2/5"))
    assert [line.split()[0] for line in lines[table + 2 : stopped]] == ["train", "val", "test"]
    assert "fast path" not in out.stdout and out.stderr.count("fast path:") == 1
    tested = xt("test", "r", cwd=tmp_path)  # evaluating the run says nothing about it
    assert "fast path" not in tested.stdout + tested.stderr
