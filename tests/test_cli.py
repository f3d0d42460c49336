"""The ``xt`` command line: the real console script in subprocesses for the main flows, click's CliRunner
(in-process, same ``main``) for the many bad-input cases."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ENV, xt, xt_reporting_imports

from xt_training import registry
from xt_training.cli import cli

SMALL = ["--data-opt", "n_samples=256", "--seed", "3", "-q"]


pytestmark = pytest.mark.usefixtures("fresh_registry")  # conftest


def invoke(*args: str, code: int = 2):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def read(path: Path):
    return json.loads(path.read_text())


# --- start-up ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "metrics"], ["plugins"], ["run", "--help"]])
def test_help_list_and_plugins_do_not_import_torch(args, tmp_path):
    _, imported = xt_reporting_imports(*args, env=ENV, cwd=tmp_path)
    assert imported == "[]", imported


# --- xt run ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_saves_a_resolved_configuration_that_reproduces_the_run(tmp_path):
    run1, run2, run3 = tmp_path / "run1", tmp_path / "run2", tmp_path / "run3"
    xt(
        "run", "--model", "cnn", "--data", "synthetic-images", "--epochs", "2", *SMALL,
        "--metric", "accuracy", "--metric", "top3=top-k-accuracy", "--metric-opt", "top3.k=3",
        "--model-opt", "hidden=(32,)", "--optimizer", "sgd", "--lr", "0.05", "--optimizer-opt", "momentum=0.9",
        "--scheduler", "cosine", "--logger", "csv", "--save-dir", str(run1), cwd=tmp_path,
    )  # fmt: skip
    config = read(run1 / "config.json")
    assert config["model"]["name"] == "cnn" and config["model"]["options"] == {"hidden": [32]}
    assert config["model"]["resolved"] == {
        "in_channels": 3, "image_size": 32, "num_classes": 10, "channels": [6, 16], "kernel_size": 5,
        "hidden": [32], "dropout": 0.0,
    }  # fmt: skip
    assert config["data"]["options"] == {"n_samples": 256}
    assert config["info"]["num_classes"] == 10
    assert config["optimizer"]["options"] == {"momentum": 0.9, "lr": 0.05}
    assert config["scheduler"]["resolved"]["T_max"] is None and config["scheduler"]["resolved"]["epochs"] == 2
    assert config["loss"]["name"] == "cross-entropy"  # the data's suggestion, recorded
    assert config["metrics"]["top3"]["name"] == "top-k-accuracy"
    assert (
        config["metrics"]["top3"]["options"] == {"k": 3} and config["metrics"]["top3"]["resolved"]["k"] == 3
    )
    assert [lg["name"] for lg in config["loggers"]] == ["csv"] and (run1 / "metrics.csv").is_file()
    assert (config["epochs"], config["seed"]) == (2, 3)
    history = read(run1 / "history.json")
    assert len(history) == 2 and {"val/accuracy", "test/top3", "lr"} <= set(history[0])
    assert history[1]["lr"] < history[0]["lr"]  # the cosine schedule stepped
    assert (run1 / "checkpoints" / "best.pt").is_file()

    xt("run", "--config", str(run1), "--save-dir", str(run2), "-q", cwd=tmp_path)
    assert read(run2 / "history.json") == history  # same seed, data and options: the same numbers

    xt(
        "run",
        "--config",
        str(run1 / "config.json"),
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--save-dir",
        str(run3),
        "-q",
        cwd=tmp_path,
    )
    changed = read(run3 / "config.json")
    assert (changed["epochs"], changed["optimizer"]["options"]["lr"]) == (1, 0.01)
    assert changed["metrics"].keys() == config["metrics"].keys() and len(read(run3 / "history.json")) == 1

    results = json.loads(xt("test", str(run1), "--json", cwd=tmp_path).stdout)
    best = min(history, key=lambda row: row["val/loss"])
    assert results["test"]["loss"] == pytest.approx(best["test/loss"], rel=1e-5)
    assert results["test"]["top3"] == pytest.approx(best["test/top3"], rel=1e-5)
    assert read(run1 / "test_results.json") == results
    split = json.loads(
        xt(
            "test",
            str(run1),
            "--split",
            "val",
            "--json",
            "--checkpoint",
            str(run1 / "checkpoints" / "last.pt"),
            cwd=tmp_path,
        ).stdout
    )
    assert split["val"]["loss"] == pytest.approx(history[-1]["val/loss"], rel=1e-5)


def test_the_demo_command_learns_and_prints_progress_with_python_m(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xt_training", "run", "--model", "cnn", "--data", "synthetic-images", "--epochs", "3"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("cnn-synthetic-images-")
    assert f"run saved to {Path('runs') / run.name}" in out.stdout
    assert "accuracy" in out.stdout and "epoch 3" in out.stdout
    history = read(run / "history.json")
    assert history[-1]["val/accuracy"] > 0.9 and history[-1]["train/loss"] < history[0]["train/loss"]


def test_rnn_and_mlp_on_sequences_with_a_batch_scheduler(tmp_path):
    xt(
        "run", "--model", "rnn", "--model-opt", "cell='lstm'", "--model-opt", "hidden_size=32",
        "--data", "synthetic-sequences", "--batch-size", "32", "--scheduler", "one-cycle", "--lr", "0.01",
        "--epochs", "2", "--monitor", "val/accuracy", *SMALL, "--save-dir", str(tmp_path / "r"), cwd=tmp_path,
    )  # fmt: skip
    config = read(tmp_path / "r" / "config.json")
    assert config["model"]["resolved"]["cell"] == "lstm" and config["model"]["resolved"]["input_size"] == 32
    assert config["data"]["options"]["batch_size"] == 32 and config["monitor"] == "val/accuracy"
    assert config["scheduler"]["resolved"]["steps_per_epoch"] == 5  # 154 training rows / 32


@pytest.mark.slow
def test_resume_extends_a_run_and_refuses_a_different_one(tmp_path):
    args = ["--model", "mlp", "--data", "synthetic-classification", *SMALL, "--save-dir", "r"]
    xt(
        "run",
        *args,
        "--epochs",
        "2",
        "--checkpoint-every",
        "2",
        "--clip-grad-norm",
        "1",
        "--accumulate-grad-batches",
        "2",
        cwd=tmp_path,
    )
    first = read(tmp_path / "r" / "history.json")
    saved = read(tmp_path / "r" / "config.json")
    assert (saved["checkpoint_every_n_steps"], saved["clip_grad_norm"], saved["accumulate_grad_batches"]) == (
        2,
        1.0,
        2,
    )
    refused = xt("run", "--resume", "r", "--optimizer", "sgd", cwd=tmp_path, code=2)
    assert "xt: error: cannot resume from" in refused.stderr and "optimizer" in refused.stderr
    assert read(tmp_path / "r" / "config.json") == saved  # a refused resume leaves the run as it was
    xt("run", "--resume", "r", "--epochs", "3", "-q", cwd=tmp_path)
    history = read(tmp_path / "r" / "history.json")
    assert history[:2] == first and len(history) == 3
    assert read(tmp_path / "r" / "config.json") == {**saved, "epochs": 3}


@pytest.mark.slow
def test_torchrun_xt_run_writes_one_run_directory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "xt_training", "run",
         "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=400", "--epochs", "2"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # gloo's teardown at interpreter exit sometimes aborts a rank after the run finished (plain F.train too)
    assert out.returncode == 0 or "terminate called without an active exception" in out.stderr, out.stderr
    (run,) = (tmp_path / "runs").iterdir()  # every rank used rank 0's directory name
    assert out.stdout.count("run saved to") == 1
    assert read(run / "config.json")["model"]["name"] == "mlp" and len(read(run / "history.json")) == 2


TINY = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200", "-q"]


def test_resume_refuses_a_changed_configuration(tmp_path):
    run = str(tmp_path / "r")
    invoke(*TINY, "--epochs", "1", "--scheduler", "cosine", "--save-dir", run, code=0)
    saved = read(tmp_path / "r" / "config.json")
    for args, message in [
        (
            ["--seed", "3"],
            "differs from the run's (seed: 0 then, 3 now); a resumed run may change only epochs, ",
        ),
        (["--data-opt", "n_samples=900"], "(data.options.n_samples: 200 then, 900 now)"),
        (
            ["--metric", "f1"],
            "(metrics.accuracy: 'accuracy' then, None now; metrics.f1: None then, 'f1' now)",
        ),
        (
            ["--epochs", "2"],
            "scheduler 'cosine' spreads its schedule over the run's 1 epochs; resume with --epochs 1",
        ),
    ]:
        out = invoke("run", "--resume", run, *args, "-q").output
        assert out.startswith(f"xt: error: cannot resume from '{run}'") and message in out, out
    assert read(tmp_path / "r" / "config.json") == saved  # a refused resume leaves the run as it was

    # a schedule not spread over the epochs (T_max given), and what may change: epochs, loggers, device
    invoke(*TINY, "--epochs", "1", "--scheduler", "cosine", "--scheduler-opt", "T_max=4", "--save-dir",
           str(tmp_path / "t"), code=0)  # fmt: skip
    invoke("run", "--resume", str(tmp_path / "t"), "--epochs", "2", "--logger", "csv", "--device", "cpu", "-q",
           code=0)  # fmt: skip
    assert len(read(tmp_path / "t" / "history.json")) == 2 and (tmp_path / "t" / "metrics.csv").is_file()


def test_resume_refuses_more_epochs_for_a_one_cycle_schedule(tmp_path):
    run = str(tmp_path / "r")
    invoke(*TINY, "--epochs", "1", "--scheduler", "one-cycle", "--save-dir", run, code=0)
    out = invoke("run", "--resume", run, "--epochs", "2", "-q").output
    assert "scheduler 'one-cycle' spreads its schedule over the run's 1 epochs" in out, out
    assert f"`xt run --config {run} --epochs 2 --save-dir NEW_DIR`" in out


def test_plateau_follows_the_monitored_values_mode(tmp_path):
    # accuracy improves upwards: a 'min' plateau would cut the learning rate at every improvement
    invoke(*TINY, "--epochs", "1", "--scheduler", "plateau", "--monitor", "val/accuracy",
           "--save-dir", str(tmp_path / "r"), code=0)  # fmt: skip
    assert read(tmp_path / "r" / "config.json")["scheduler"]["resolved"]["mode"] == "max"
    out = invoke(*TINY, "--epochs", "1", "--scheduler", "plateau", "--scheduler-opt", "mode=min",
                 "--monitor", "val/accuracy", "--save-dir", str(tmp_path / "s")).output  # fmt: skip
    assert "ReduceLROnPlateau(mode='min') steps on 'val/accuracy', which is a 'max' value here" in out, out


def test_a_new_run_refuses_a_directory_that_holds_one_and_a_failed_one_leaves_none(tmp_path):
    run = str(tmp_path / "r")
    invoke(*TINY, "--epochs", "1", "--save-dir", run, code=0)
    saved = read(tmp_path / "r" / "config.json")
    out = invoke(*TINY, "--model", "cnn", "--data", "synthetic-images", "--save-dir", run).output
    fix = f"continue it with `xt run --resume {run}`, choose another --save-dir, or pass --overwrite"
    assert out == f"xt: error: '{run}' already holds a run; {fix}\n"
    (tmp_path / "c.py").write_text("model = train_loader = optimizer = loss_fn = None\nepochs = 1\n")
    out = invoke("train", str(tmp_path / "c.py"), "--save-dir", run).output
    assert (
        f"'{run}' already holds a run; set resume = True in the config file, choose another --save-dir" in out
    ), out
    assert read(tmp_path / "r" / "config.json") == saved

    invoke(*TINY, "--model", "mlpp", "--save-dir", str(tmp_path / "typo"))
    invoke(*TINY, "--lr", "-1", "--save-dir", str(tmp_path / "bad"))
    assert not (tmp_path / "typo").exists() and not (tmp_path / "bad").exists()


def test_testing_a_config_file_without_a_checkpoint_warns(tmp_path):
    (tmp_path / "c.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "model = torch.nn.Linear(4, 2)\nloss_fn = torch.nn.CrossEntropyLoss()\n"
        "test_loaders = {'test': DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8).long()))}\n"
    )
    out = invoke("test", str(tmp_path / "c.py"), "--json", code=0)
    assert out.stderr.startswith("xt: warning: no --checkpoint: these are the results of the model as"), (
        out.stderr
    )
    assert "loss" in json.loads(out.stdout)["test"]
    out = invoke("test", str(tmp_path / "c.py"), "--checkpoint", "best").output
    assert "--checkpoint best picks a checkpoint of a run directory; with a config file, pass" in out, out


def test_xt_test_checkpoint_takes_best_last_or_a_file(tmp_path):
    run = str(tmp_path / "r")
    invoke(*TINY, "--epochs", "1", "--save-dir", run, code=0)
    last = json.loads(invoke("test", run, "--checkpoint", "last", "--json", code=0).stdout)
    by_file = json.loads(
        invoke("test", run, "--checkpoint", f"{run}/checkpoints/last.pt", "--json", code=0).stdout
    )
    assert last == by_file  # one epoch: best and last are the same weights, either way the same results
    out = invoke("test", run, "--checkpoint", "lats").output
    assert (
        out
        == "xt: error: checkpoint 'lats' does not exist; did you mean 'last'? (best, last, or a checkpoint file)\n"
    )


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_xt_test_names_what_a_checkpoint_that_is_none_is(tmp_path):
    """A directory or a TorchScript model given as the checkpoint: one line saying what it is, no traceback."""
    run = tmp_path / "r"
    invoke(*TINY, "--epochs", "1", "--save-dir", str(run), code=0)
    script = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(20, 2)), script)
    for args, message in [
        (["--checkpoint", str(script)], f"'{script}' is a TorchScript model (torch.jit.save), a whole model, not a checkpoint of weights; load it with torch.jit.load('{script}')"),
        (["--checkpoint", str(run / "checkpoints")], f"'{run}/checkpoints' is a folder of checkpoints, not a run directory; pass one of them: {run}/checkpoints/best.pt, {run}/checkpoints/last.pt"),
    ]:  # fmt: skip
        result = invoke("test", str(run), *args)
        assert result.output.startswith(f"xt: error: {message}") and result.output.count("\n") == 1, (
            result.output
        )
        assert "Traceback" not in result.output


# --- config files ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_template_train_and_test_a_python_config_file(tmp_path):
    out = xt("template", "proj", cwd=tmp_path)
    assert "wrote proj/config.py" in out.stdout
    xt("train", "proj/config.py", "--save-dir", "run", "-q", cwd=tmp_path)
    assert (tmp_path / "run" / "config.py").read_text() == (tmp_path / "proj" / "config.py").read_text()
    history = read(tmp_path / "run" / "history.json")
    assert len(history) == 5 and history[-1]["val/acc"] > 0.8
    results = json.loads(
        xt("test", "proj/config.py", "--checkpoint", "run/checkpoints/best.pt", "--json", cwd=tmp_path).stdout
    )
    assert results["test"]["acc"] > 0.8 and 0 < results["test"]["auc"] <= 1
    # its run directory holds the config file: `xt test RUN` tests its best checkpoint on the file's test_loaders
    # the run's copy of the file is code: run only when trusted (tests/test_trust.py)
    assert json.loads(xt("test", "run", "--json", "--trust", cwd=tmp_path).stdout) == results


def test_json_output_is_standard_json_with_null_for_nan(tmp_path):
    xt("template", "proj", cwd=tmp_path)
    with (tmp_path / "proj" / "config.py").open("a") as f:  # a metric whose value is NaN
        f.write('eval_metrics["nan"] = lambda y_pred, y: torch.tensor(float("nan"))\n')
    out = xt("test", "proj/config.py", "--json", cwd=tmp_path).stdout

    def refuse(token):  # Python's json reads NaN, strict readers (jq, JSON.parse) do not
        raise AssertionError(f"{token} in the JSON output")

    results = json.loads(out, parse_constant=refuse)
    assert results["test"]["nan"] is None and 0 <= results["test"]["acc"] <= 1


# --- show / plot --------------------------------------------------------------------------------------------------
def test_show_and_plot_a_run(tmp_path):
    xt(
        "run",
        "--model",
        "mlp",
        "--data",
        "synthetic-classification",
        "--epochs",
        "2",
        *SMALL,
        "--save-dir",
        "r",
        cwd=tmp_path,
    )
    shown = xt("show", "r", cwd=tmp_path).stdout
    assert "val/accuracy" in shown or "accuracy" in shown
    pytest.importorskip("matplotlib")
    xt("plot", "r", "-o", "curves.png", cwd=tmp_path)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- listing ----------------------------------------------------------------------------------------------------
def test_list_info_and_plugins_output():
    listed = invoke("list", "models", code=0).output.splitlines()
    assert [line.split()[0] for line in listed] == ["cnn", "mlp", "rnn", "rnn-tagger", "text-gru", "unet"]
    assert "conv-pool" in listed[0]
    everything = invoke("list", code=0).output
    for plural in registry.KINDS.values():
        assert f"{plural}:" in everything
    assert [line.split()[0] for line in invoke("list", "metrics", "r*", code=0).output.splitlines()] == [
        "r2",
        "recall",
        "roc-auc",
    ]
    rows = json.loads(invoke("list", "losses", "*entropy", "--json", code=0).output)
    assert rows == [
        {
            "kind": "loss", "name": "cross-entropy", "plugin": "xt_training.builtins.losses",
            "distribution": "xt-training", "version": rows[0]["version"], "description": rows[0]["description"],
        }
    ]  # fmt: skip
    assert "no models match 'zz*'" in invoke("list", "models", "zz*", code=0).output
    info = invoke("info", "model", "rnn", code=0).output
    assert (
        "plugin:  xt_training.builtins.models (xt-training" in info
        and "cell" in info
        and "default 'gru'" in info
    )
    plugins = json.loads(invoke("plugins", "--json", code=0).output)
    builtin = {p["name"]: p for p in plugins["plugins"]}["xt_training.builtins.metrics"]
    assert builtin["status"] == "loaded" and "accuracy" in builtin["registered"]["metric"]
    text = invoke("plugins", code=0).output
    assert "xt_training.builtins.models  xt-training" in text
    # commands a plugin adds (register_commands) are listed with it
    by_name = {p["name"]: p for p in plugins["plugins"]}
    assert by_name["xt_training.builtins.export_command"]["commands"] == ["export"]
    assert "hooks: register_commands\n  commands: predict\n" in text


# --- bad input: one line, exit 2, no traceback -----------------------------------------------------------------------
RUN = ["run", "--model", "cnn", "--data", "synthetic-images"]


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("corrupt.json").write_text('{"model": ')
    Path("wrong.json").write_text('{"model": 3}')
    Path("empty_run").mkdir()
    Path("nockpt").mkdir()
    Path("nockpt/config.json").write_text(json.dumps({"model": "mlp", "data": "synthetic-classification"}))
    Path("notes.txt").write_text("hello")
    Path("incomplete.py").write_text("model = 1\n")
    Path("syntax.py").write_text("model = (\n")
    Path("tpl").mkdir()
    Path("tpl/config.py").write_text("# mine\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--model", "cnnn", "--data", "synthetic-images"], "unknown model 'cnnn'; did you mean 'cnn'? see `xt list models`"),
        (["run", "--model", "cnn", "--data", "synthetic-imags"], "did you mean 'synthetic-images'?"),
        (["run", "--model", "cnn"], "no data is chosen; pick one with --data NAME (`xt list data`)"),
        (["run", "--data", "synthetic-images"], "no model is chosen; pick one with --model NAME"),
        ([*RUN, "--model-opt", "hiden=3"], "model 'cnn' has no option 'hiden'; did you mean 'hidden'? options: in_channels=3"),
        ([*RUN, "--model-opt", "hidden=abc"], "option hidden='abc' must be int | Sequence[int], not str"),
        ([*RUN, "--model-opt", "hidden"], "'hidden' is not KEY=VALUE"),
        ([*RUN, "--data-opt", "n_sample=10"], "data 'synthetic-images' has no option 'n_sample'; did you mean 'n_samples'?"),
        ([*RUN, "--optimizer", "sgd", "--optimizer-opt", "momentm=0.9"], "did you mean 'momentum'?"),
        ([*RUN, "--loss", "cross-entropi"], "unknown loss 'cross-entropi'; did you mean 'cross-entropy'?"),
        ([*RUN, "--scheduler", "cosin"], "unknown scheduler 'cosin'; did you mean 'cosine'?"),
        ([*RUN, "--metric", "acc=acuracy"], "unknown metric 'acuracy'"),
        ([*RUN, "--metric", "loss"], "'loss' is the name of the training loss"),
        ([*RUN, "--metric", "f1", "--metric", "f1=recall"], "--metric f1=recall: 'f1' is chosen twice"),
        ([*RUN, "--metric-opt", "top.k=3"], "--metric-opt names metric 'top', which is not chosen"),
        ([*RUN, "--metric", "accuracy", "--metric-opt", "accuracy"], "is not NAME.KEY=VALUE"),
        ([*RUN, "--logger", "tensorbord"], "did you mean 'tensorboard'?"),
        ([*RUN, "--logger-opt", "csv.x=1"], "--logger-opt names logger 'csv', which is not chosen: add --logger csv"),
        ([*RUN, "--callback", "early-stoping"], "did you mean 'early-stopping'?"),
        ([*RUN, "--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1"),
        ([*RUN, "--batch-size", "0"], "Invalid value for '--batch-size'"),
        ([*RUN, "--epoch", "2"], "No such option '--epoch'. (Did you mean one of: '--epochs'"),
        ([*RUN, "--mode", "sideways"], "Invalid value for '--mode'"),
        ([*RUN, "--precision", "8"], "Invalid value for '--precision'"),
        ([*RUN, "--resume", "empty_run"], "config.json' does not exist"),
        (["run", "--resume", "empty_run", "--save-dir", "x"], "--resume RUN_DIR continues that run in place"),
        ([*RUN, "--device", "gpu0"], "invalid device 'gpu0'"),
        ([*RUN, "--monitor", "val/acc"], "monitor 'val/acc' is not a value of this run"),
        (["run", "--model", "rnn", "--data", "synthetic-images"], "model 'rnn' takes input_size from the data, but data 'synthetic-images' does not give it"),
        (["run", "--model", "mlp", "--data", "csv"], "data 'csv' needs option 'path'"),
        (["run", "--model", "mlp", "--data", "csv", "--data-opt", "path=nope.csv"], "CSV file 'nope.csv' does not exist"),
        (["run", "--config", "missing.json"], "Path 'missing.json' does not exist"),
        (["run", "--config", "corrupt.json"], "'corrupt.json' is not valid JSON"),
        (["run", "--config", "wrong.json"], "'model' must be {'name': NAME, 'options': {...}} or null, not 3"),
        (["run", "--config", "empty_run"], "config.json' does not exist; pass a run directory written by `xt run`"),
        (["--batch-size", "3"], "No such option '--batch-size'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["-p", "nosuchplugin", "list"], "-p nosuchplugin: no installed plugin or importable module of that name"),
        (["list", "modles"], "unknown kind 'modles'; did you mean 'models'?"),
        (["info", "model", "resnt"], "unknown model 'resnt'"),
        (["test", "missing_dir"], "Path 'missing_dir' does not exist"),
        (["test", "empty_run"], "'empty_run' is not a run directory (no run.json, config.json or checkpoints/)"),
        (["test", "nockpt"], "run directory 'nockpt' has no checkpoints; train it first"),
        (["test", "notes.txt"], "is neither a run directory nor a Python config file (.py)"),
        (["test", "incomplete.py"], "does not define 'test_loaders'"),
        (["test", "incomplete.py", "--split", "val"], "--split applies to run directories"),
        (["train", "incomplete.py"], "does not define 'train_loader', 'optimizer', 'loss_fn', 'epochs'"),
        (["train", "syntax.py"], "syntax.py, line 1"),
        (["train", "missing.py"], "File 'missing.py' does not exist"),
        (["template", "tpl"], "exists; pass --force to overwrite it"),
        (["template", "new.py"], "'new.py' names a file; xt template takes a directory and writes DIRECTORY/config.py: `xt template new`"),
        ([*RUN, "--lr", "-1"], "optimizer 'adam': Invalid learning rate: -1.0; change its options (`xt info optimizer adam`"),
        ([*RUN, "--lr", "nan"], "optimizer 'adam': Invalid learning rate: nan"),
        ([*RUN, "--optimizer-opt", "betas=(2,3)"], "optimizer 'adam': Invalid beta parameter at index 0: 2"),
        ([*RUN, "--model-opt", "dropout=1.5"], "model 'cnn': dropout probability has to be between 0 and 1"),
        # with --nproc: said once, before any process starts (not by every rank, then by torchrun)
        (["run", "--model", "cnnn", "--data", "synthetic-images", "--nproc", "2"], "unknown model 'cnnn'; did you"),
        ([*RUN, "--metric", "acuracy", "--nproc", "2"], "unknown metric 'acuracy'; did you mean 'accuracy'?"),
        ([*RUN, "--metric", "top-k-accuracy", "--metric-opt", "top-k-accuracy.kk=2"],
         "metric 'top-k-accuracy': TopKAccuracy has no option 'kk'; did you mean 'k'?"),
        ([*RUN, "--scheduler", "step", "--scheduler-opt", "step_size=0"],
         "scheduler 'step': step_size must be at least 1 epoch, not 0"),
        ([*RUN, "--seed", "99999999999999999999"], "seed 99999999999999999999 is out of range; use a seed from 0 to 2**64-1"),
        (["train", "nockpt/config.json"], "is JSON, not a Python config file; for a run's config.json use `xt run --config RUN_DIR`"),
        (["test", "nockpt", "--split", "trian"], "the data has no split 'trian'; did you mean 'train'?"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(bad_files, args, message):
    result = invoke(*args)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xt: error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output


CONFIG = """
import torch
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
x, y = torch.randn(64, 16), torch.randint(0, 3, (64,))
train_loader = DataLoader(TensorDataset(x, y), batch_size=32)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = torch.nn.CrossEntropyLoss()
epochs = 1
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("train_loader = DataLoader(TensorDataset(x[:, :10], y), batch_size=32)",
         "epoch 1, batch 1 of loader 'train': the model failed (mat1 and mat2 shapes cannot be multiplied (32x10 and 16x8)): the inputs Tensor(32, 10) float32 have 10 features, but the model's first layer Linear(16, 8) takes 16; give it inputs of 16 features, or build the model for 10"),
        ("train_loader = DataLoader(TensorDataset(x.double(), y), batch_size=32)",
         "the inputs are float64 and the model's weights float32; convert the inputs to float32"),
        ("y[40] = 7", "epoch 1, batch 2 of loader 'train': label 7 is out of range for the model's 3 outputs (classes 0 to 2)"),
        ("model = None", "model must be a torch.nn.Module, not NoneType"),
        ("model = 'mlp'", "model must be a torch.nn.Module, not str; build it first, e.g. xt_training.create_model('mlp')"),
        ("with torch.device('meta'):\n    model = torch.nn.Linear(16, 3)\noptimizer = torch.optim.SGD(model.parameters(), lr=0.1)",
         "the model's weights are on the meta device (shapes without values); give them values before training"),
        ("eval_metrics = {'acc': 'accuracy'}", "metric 'acc' is the name 'accuracy', not a metric; pass the metric itself"),
        ("eval_metrics = {'acc': 3}", "metric 'acc' is the int 3, not a metric; pass an object with update(y_pred, y)"),
        ("optimizer = torch.optim.SGD(torch.nn.Linear(16, 3).parameters(), lr=0.1)",
         "the optimizer updates none of the model's parameters (it was built over another model's), so training would change nothing; build it over this model: SGD(model.parameters(), ...)"),
        ("scheduler = torch.optim.SGD(model.parameters(), lr=0.1)",
         "scheduler is an optimizer (SGD), not an LR scheduler; pass a scheduler built over the optimizer"),
    ],
)  # fmt: skip
def test_bad_input_of_a_config_file_is_one_line_and_exit_2(tmp_path, change, message):
    """F.train's bad input through `xt train`: xt-training's own one line, not a traceback or a failure in code."""
    (tmp_path / "c.py").write_text(CONFIG + change + "\n")
    result = invoke("train", str(tmp_path / "c.py"), "--save-dir", str(tmp_path / "run"), "-q")
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("xt: error: ") and message in lines[-1], result.output
    assert "Traceback" not in result.output
    assert all(line.startswith("training failed in epoch 1; the weights") for line in lines[:-1]), (
        result.output
    )


def test_no_arguments_prints_help():
    assert "Commands:" in invoke(code=0).output


# --- plugins through the CLI ---------------------------------------------------------------------------------------
PLUGIN = """
    import click
    from xt_training.hookspecs import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command()
        @click.argument("who")
        def hello(who):
            '''Say hello.'''
            click.echo(f"hello {who}")

        @cli.command("run")
        def shadow():
            '''A clash with a built-in command.'''

    @hookimpl
    def register_models(register):
        register("tiny", "torch.nn:Identity", description="does nothing")
"""


def fake_site(root: Path) -> Path:
    root.mkdir()
    for dist, ep, module, source in (
        ("hello-dist", "hello", "hello_plugin", textwrap.dedent(PLUGIN)),
        ("broken-dist", "broken", "broken_plugin", "raise RuntimeError('boom')\n"),
    ):
        (root / f"{module}.py").write_text(source)
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[xt_training]\n{ep} = {module}\n")
    return root


def test_plugins_add_commands_and_broken_ones_are_reported(tmp_path):
    env = {
        **ENV,
        "PYTHONPATH": ":".join([str(fake_site(tmp_path / "site")), *filter(None, [ENV.get("PYTHONPATH")])]),
    }
    out = xt("hello", "world", cwd=tmp_path, env=env)
    assert out.stdout == "hello world\n"
    assert "xt: warning: plugin 'broken' (broken-dist 1.0) failed to load: RuntimeError: boom" in out.stderr
    assert (
        "plugin 'hello' adds a command 'run', which clashes with the built-in command; ignored" in out.stderr
    )
    assert "hello" in xt("--help", cwd=tmp_path, env=env).stdout
    listed = xt("list", "models", cwd=tmp_path, env=env)
    assert re.search(r"^  tiny +does nothing  \[hello-dist\]$", listed.stdout, re.M)
    plugins = json.loads(xt("plugins", "--json", cwd=tmp_path, env=env).stdout)["plugins"]
    status = {p["name"]: (p["status"], p["error"]) for p in plugins}
    assert status["broken"] == ("broken", "RuntimeError: boom (broken_plugin.py:1)")  # its file and line
    assert status["hello"] == ("loaded", None)

    quiet = xt("-p", "no:broken", "list", "models", cwd=tmp_path, env=env)
    assert "broken" not in quiet.stderr and "tiny" in quiet.stdout
    off = xt("list", "models", cwd=tmp_path, env={**env, "XT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert off.stderr == "" and "tiny" not in off.stdout
    allowed = xt("list", "models", cwd=tmp_path, env={**env, "XT_PLUGINS": "hello"})
    assert "broken" not in allowed.stderr and "tiny" in allowed.stdout
    assert xt(
        "hello", "x", cwd=tmp_path, env={**env, "XT_DISABLE_PLUGIN_AUTOLOAD": "1"}, code=2
    ).stderr.startswith("xt: error: No such command 'hello'")


def test_a_plugin_that_exits_or_raises_a_base_exception_is_isolated(tmp_path):
    """sys.exit() at import, or any BaseException but KeyboardInterrupt from a hook, breaks only that plugin."""
    plugins = {
        "exits": "import sys\nsys.exit(3)\n",
        "hooks": textwrap.dedent(
            """
            from xt_training import hookimpl

            class Stop(BaseException):
                pass

            @hookimpl
            def register_models(register):
                raise Stop("from a hook")
            """
        ),
    }
    root = tmp_path / "site"
    root.mkdir()
    for name, source in plugins.items():
        (root / f"{name}_plugin.py").write_text(source)
        info = root / f"{name}_dist-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-dist\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[xt_training]\n{name} = {name}_plugin\n")
    path = [str(root), *filter(None, [ENV.get("PYTHONPATH")])]
    env = {**ENV, "PYTHONPATH": ":".join(path)}
    for args in (["--help"], ["list", "models"]):
        out = xt(*args, cwd=tmp_path, env=env)
        assert ("Usage: xt" if args == ["--help"] else "mlp") in out.stdout
        assert "plugin 'exits' (exits-dist 1.0) failed to load: SystemExit: 3" in out.stderr
        assert "plugin 'hooks' (hooks-dist 1.0) failed to load: Stop: from a hook" in out.stderr


def test_num_threads_sets_torch_threads_and_is_saved(tmp_path):
    base = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=300",
            "--epochs", "1", "-q"]  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        invoke(*base, "--save-dir", str(tmp_path / "one"), "--num-threads", "1", code=0)
        assert torch.get_num_threads() == 1 and read(tmp_path / "one" / "config.json")["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert "not in the range" in invoke(*base, "--num-threads", "0", code=2).output
    config = {**read(tmp_path / "one" / "config.json"), "num_threads": 0}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    out = invoke("run", "--config", str(tmp_path / "bad.json"), "--save-dir", str(tmp_path / "bad"), code=2)
    assert "num_threads must be a positive integer or null, not 0" in out.output


def test_loop_options_reach_f_train_and_the_saved_configuration(tmp_path):
    base = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=300",
            "--epochs", "1", "-q"]  # fmt: skip
    invoke(*base, "--save-dir", str(tmp_path / "fast"), code=0)
    assert "fast path" in (tmp_path / "fast" / "notes.txt").read_text()
    invoke(*base, "--save-dir", str(tmp_path / "slow"), "--no-fast-path", "--nonfinite-loss", "skip",
           "--channels-last", code=0)  # fmt: skip
    assert "fast path" not in (tmp_path / "slow" / "notes.txt").read_text()  # (it holds the model summary)
    config = read(tmp_path / "slow" / "config.json")
    assert (config["fast_path"], config["nonfinite_loss"], config["channels_last"]) == (False, "skip", True)
    assert read(tmp_path / "slow" / "history.json")[0]["train/skipped"] == 0
    invoke(*base, "--save-dir", str(tmp_path / "x"), "--export", "onnx2", code=2)
