"""The table of bad input and its errors, each message produced by triggering the error at build time.

Every case runs for real -- the Python API with tiny tensors, the CLI in-process through click's test
runner -- in a scratch directory, so the table shows the messages users get from this version, and a case
that stops raising (or starts printing several lines) fails the docs build. The test suite checks the
same messages (tests/test_core.py, test_cli.py, test_registry.py, test_fault_tolerance.py, ...).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Case:
    """One bad input: what it is, how a user meets it (shown), and the call that meets it (run)."""

    problem: str
    shown: str
    trigger: Callable[[], Any]
    cli: bool = False


def _tiny() -> tuple[Any, Any, Any]:
    """A 3-class MLP, a loader of 64 examples and a loss: the smallest real training setup."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = (x @ torch.randn(16, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    return model, DataLoader(TensorDataset(x, y), batch_size=32), nn.CrossEntropyLoss()


def _train(save_dir: str = "run", **overrides: Any) -> Any:
    import torch

    from xt_training.utils import functional as F

    model, loader, loss_fn = _tiny()
    args = {
        "train_loader": loader,
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "epochs": 1,
        "loss_fn": loss_fn,
        "quiet": True,
        **overrides,
    }
    return F.train(save_dir, **args)


def _own_step(model: Any, batch: Any, optimizer: Any) -> Any:
    """A step_fn (never reached: the cases that use it are refused before training)."""
    raise AssertionError("not called")


def _test(**overrides: Any) -> Any:
    from xt_training.utils import functional as F

    model, loader, loss_fn = _tiny()
    args = {"test_loaders": {"test": loader}, "model": model, "loss_fn": loss_fn, "quiet": True, **overrides}
    return F.test(**args)


def _labels(y: Any) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(len(y), 16, generator=g), y), batch_size=32)


def _accuracy() -> dict[str, Any]:
    from xt_training import metrics

    return {"acc": metrics.Accuracy()}


def _nan_loss(y_pred: Any, y: Any) -> Any:
    import torch.nn.functional as TF

    return TF.cross_entropy(y_pred, y) * float("nan")


def _nan_from_step_2() -> Callable[[Any, Any], Any]:
    calls = []

    def loss_fn(y_pred: Any, y: Any) -> Any:
        calls.append(1)
        return _nan_loss(y_pred, y) if len(calls) > 1 else y_pred.sum() * 0

    return loss_fn


def _corrupt_checkpoint() -> Any:
    from xt_training import load_checkpoint

    _train("ckpt")
    data = Path("ckpt/checkpoints/last.pt").read_bytes()
    Path("ckpt/checkpoints/last.pt").write_bytes(data[:200])
    return load_checkpoint("ckpt/checkpoints/last.pt", _tiny()[0])


class _Payload:
    """An object whose unpickling would run code: it would create the file ``pwned``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, ("pwned", "w"))


def _unsafe_checkpoint() -> Any:
    import torch

    from xt_training import load_checkpoint

    torch.save({"model": _tiny()[0].state_dict(), "extra": _Payload()}, "unsafe.pt")
    try:
        return load_checkpoint("unsafe.pt", _tiny()[0])
    finally:
        if Path("pwned").exists():
            raise AssertionError("loading the unsafe checkpoint ran its code")


def _other_architecture() -> Any:
    from torch import nn

    from xt_training import load_checkpoint

    _train("arch")
    return load_checkpoint(
        "arch/checkpoints/last.pt", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    )


def _different_resume() -> Any:
    import torch

    _train("resumed")
    model, loader, loss_fn = _tiny()
    return _train("resumed", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), resume=True)


def _disk_full() -> Any:
    from xt_training import save_checkpoint

    save_checkpoint("full.pt", _tiny()[0], epoch=1)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    fsync = os.fsync
    os.fsync = full
    try:
        save_checkpoint("full.pt", _tiny()[0], epoch=2)
    finally:
        os.fsync = fsync
        import torch

        assert torch.load("full.pt", weights_only=True)["epoch"] == 1, "the previous checkpoint was lost"


def _in_use() -> Any:
    import fcntl

    Path("busy").mkdir()
    with open("busy/.xt.lock", "w") as lock:  # held as the process of a running run holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(
            "4242\n"
        )  # the holder's pid as it writes it; fixed, so that the committed table stays current
        lock.flush()
        return _train("busy")


def _non_pair() -> Any:
    import torch
    from torch.utils.data import DataLoader

    return _train(train_loader=DataLoader(torch.randn(64, 16), batch_size=32))


def _dict_without_a_rule() -> Any:
    import torch
    from torch.utils.data import DataLoader

    items = [{"input_ids": torch.zeros(8).long(), "attention_mask": torch.ones(8).long(), "labels": 0}] * 64
    return _train(train_loader=DataLoader(items, batch_size=32))


def _smaller_last_batch() -> Any:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class SeedRNN(nn.Module):  # the seed's RNNModel: a hidden state sized for batches of 32
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.RNN(8, 16, 2, batch_first=True), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x, torch.zeros(2, 32, 16))[0][:, -1])

    model = SeedRNN()
    loader = DataLoader(TensorDataset(torch.randn(100, 5, 8), torch.zeros(100).long()), batch_size=32)
    return _train(train_loader=loader, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _empty() -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(
        TensorDataset(torch.zeros(3, 16), torch.zeros(3).long()), batch_size=4, drop_last=True
    )
    return _train(train_loader=loader)


def _runner_without_optimizer() -> Any:
    from xt_training import Runner

    model, loader, loss_fn = _tiny()
    return Runner(model, loss_fn, quiet=True)(loader)


def _predict_shape() -> Any:
    import torch

    from xt_training import create_model
    from xt_training.utils import functional as F

    return F.predict(create_model("cnn", in_channels=3), [torch.randn(2, 1, 32, 32)])


def _write_files() -> None:
    Path("corrupt.json").write_text('{"model": {"name": "cnn"')
    Path("syntax.py").write_text("model = (\n")
    Path("incomplete.py").write_text("model = None\n")
    Path("notes.txt").write_text("not a config\n")
    Path("file").write_text("a file, not a directory\n")
    Path("empty_run").mkdir()
    Path("empty_run/config.json").write_text(
        '{"model": {"name": "mlp", "options": {}}, "data": {"name": "synthetic-classification", "options": {}}}'
    )
    Path("received").mkdir()
    Path("received/config.json").write_text(
        '{"model": {"name": "mlp", "options": {}}, "data": {"name": "synthetic-classification", "options": {}}, '
        '"metrics": {"m": {"name": "mean", "options": {"fn": "somewhere:fn"}}}}'
    )
    Path("received_py").mkdir()
    Path("received_py/config.py").write_text("model = None\n")


def _distributed(**variables: str) -> Callable[[], Any]:
    """Join a process group as ``F.train`` does, under torchrun's environment variables set by hand."""

    def run() -> Any:
        from xt_training import distributed

        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            return distributed.init_from_env()
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value

    return run


def _cli(*args: str) -> Callable[[], str]:
    def run() -> str:
        from click.testing import CliRunner

        from xt_training.cli import cli

        result = CliRunner().invoke(cli, list(args), prog_name="xt")
        if result.exit_code != 2:
            raise AssertionError(f"xt {' '.join(args)} exited {result.exit_code}, not 2: {result.output}")
        return result.output

    return run


def _call(fn: Callable[..., Any], /, **kwargs: Any) -> Callable[[], Any]:
    return lambda: fn(**kwargs)


def _create(kind: str, name: str, **options: Any) -> Callable[[], Any]:
    def run() -> Any:
        from xt_training import registry

        return registry.create(kind, name, **options)

    return run


def cases() -> list[Case]:
    """The bad inputs, in the order of the table."""
    import torch

    from xt_training import metrics

    return [
        Case("unknown name (with a suggestion)", "xt run --model cnnn --data synthetic-images",
             _cli("run", "--model", "cnnn", "--data", "synthetic-images"), cli=True),
        Case("unknown name (no close match)", "create_model('zzz')", _create("model", "zzz")),
        Case("wrong option name", "xt run --model cnn --data synthetic-images --model-opt hiden=3",
             _cli("run", "--model", "cnn", "--data", "synthetic-images", "--model-opt", "hiden=3"), cli=True),
        Case("wrong option type", "create_model('cnn', hidden='big')", _create("model", "cnn", hidden="big")),
        Case("option value not among the choices", "create_model('rnn', cell='lstmm')",
             _create("model", "rnn", cell="lstmm")),
        Case("required option missing", "create_data('csv')", _create("data", "csv")),
        Case("option not KEY=VALUE", "xt run --model cnn --data synthetic-images --model-opt hidden",
             _cli("run", "--model", "cnn", "--data", "synthetic-images", "--model-opt", "hidden"), cli=True),
        Case("model that does not fit the data", "xt run --model rnn --data synthetic-images",
             _cli("run", "--model", "rnn", "--data", "synthetic-images"), cli=True),
        Case("unknown kind", "xt list modles", _cli("list", "modles"), cli=True),
        Case("plugin that is not installed", "xt -p nosuchplugin list", _cli("-p", "nosuchplugin", "list"), cli=True),
        Case("prediction/label shapes a metric cannot take",
             "F.test(..., eval_metrics={'acc': metrics.Accuracy()}) on labels of shape (N, 2)",
             _call(_test, test_loaders={"test": _labels(torch.zeros(64, 2).long())}, loss_fn=None,
                   eval_metrics=_accuracy())),
        Case("labels out of range", "F.test(..., eval_metrics={'acc': metrics.Accuracy()}) on label 7 of a 3-class model",
             _call(_test, test_loaders={"test": _labels(torch.full((64,), 7))}, loss_fn=None,
                   eval_metrics=_accuracy())),
        Case("not a metric", "F.test(..., eval_metrics={'x': 3})", _call(_test, eval_metrics={"x": 3})),
        Case("a metric given by its name", "F.train(..., eval_metrics={'acc': 'accuracy'})",
             _call(_train, eval_metrics={"acc": "accuracy"})),
        Case("nothing to report", "F.test(test_loaders, model) without loss_fn, eval_metrics or save_dir",
             _call(_test, loss_fn=None)),
        Case("no model", "F.train(..., model=None)", _call(_train, model=None)),
        Case("a model's name where the model belongs", "F.train(..., model='mlp')", _call(_train, model="mlp")),
        Case("a model on the meta device", "F.train(...) of a model built under torch.device('meta')", _meta_model),
        Case("a lazy model not yet run", "F.train(..., model=nn.Sequential(nn.LazyLinear(3)))", _lazy_model),
        Case("an optimizer over another model's parameters", "F.train(..., model, optimizer=SGD(other.parameters()))",
             lambda: _train(optimizer=__import__("torch").optim.SGD(_tiny()[0].parameters(), lr=0.1))),
        Case("an optimizer where the scheduler belongs", "F.train(..., scheduler=torch.optim.SGD(...))",
             lambda: _train(scheduler=__import__("torch").optim.SGD(_tiny()[0].parameters(), lr=0.1))),
        Case("inputs with another number of features", "F.train(...) of a 16-feature MLP on 10 features",
             lambda: _inputs(__import__("torch").randn(64, 10))),
        Case("float64 inputs", "F.train(...) of a float32 model on float64 inputs",
             lambda: _inputs(__import__("torch").randn(64, 16, dtype=__import__("torch").float64))),
        Case("a label out of range in a later batch", "F.train(...) with label 7 in the second batch of a 3-class model",
             _late_label),
        Case("empty loader", "F.train(...) on 3 examples with batch_size=4, drop_last=True", _empty),
        Case("loader that does not yield (x, y)", "F.train(...) on DataLoader(tensor)", _non_pair),
        Case("dict batch whose keys the model's forward does not take",
             "F.train(...) of an MLP on {'input_ids', 'attention_mask', 'labels'} batches", _dict_without_a_rule),
        Case("model that assumes a fixed batch size", "F.train(...) of the seed's RNNModel (hidden state for 32) "
             "on 100 examples in batches of 32", _smaller_last_batch),
        Case("non-scalar loss", "F.train(..., loss_fn=nn.CrossEntropyLoss(reduction='none'))",
             _call(_train, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))),
        Case("NaN/inf loss", "F.train(...) with a loss that becomes NaN", _call(_train, loss_fn=_nan_loss)),
        Case("NaN/inf between logging steps, at a checkpoint (the last finite checkpoint is kept)",
             "F.train(..., checkpoint_every_n_steps=1) with a loss that becomes NaN in step 2",
             _call(_train, save_dir="diverged", loss_fn=_nan_from_step_2(), checkpoint_every_n_steps=1)),
        Case("validation every N steps without a validation loader", "F.train(..., val_every_n_steps=100)",
             _call(_train, val_every_n_steps=100)),
        Case("loss that does not fit the outputs", "F.train(..., loss_fn=nn.MSELoss()) of a classifier",
             _call(_train, loss_fn=torch.nn.MSELoss())),
        Case("a class where an instance belongs", "F.train(..., loss_fn=nn.CrossEntropyLoss)",
             _call(_train, loss_fn=torch.nn.CrossEntropyLoss)),
        Case("forward_fn that returns only the outputs", "F.train(..., forward_fn=lambda model, batch: model(batch[0]))",
             _call(_train, forward_fn=lambda model, batch: model(batch[0]))),
        Case("metric named 'loss'", "F.train(..., eval_metrics={'loss': metrics.Accuracy()})",
             _call(_train, eval_metrics={"loss": metrics.Accuracy()})),
        Case("epochs 0", "F.train(..., epochs=0)", _call(_train, epochs=0)),
        Case("epochs 0 on the command line", "xt run --model cnn --data synthetic-images --epochs 0",
             _cli("run", "--model", "cnn", "--data", "synthetic-images", "--epochs", "0"), cli=True),
        Case("unknown monitored value", "F.train(..., eval_metrics={'acc': ...}, monitor='val/accuracy')",
             _call(_train, val_loader=_tiny()[1], eval_metrics={"acc": metrics.Accuracy()}, monitor="val/accuracy")),
        Case("invalid device", "F.train(..., device='gpu:0')", _call(_train, device="gpu:0")),
        Case("invalid loop option", "F.train(..., precision='fp8')", _call(_train, precision="fp8")),
        Case("learning-rate range upside down", "xt lr-find --model mlp --data synthetic-classification --min-lr 1 --max-lr 0.1",
             _cli("lr-find", "--model", "mlp", "--data", "synthetic-classification", "--min-lr", "1", "--max-lr", "0.1"),
             cli=True),
        Case("torchrun's variable not a number", "WORLD_SIZE=abc RANK=0 xt run ...",
             _distributed(WORLD_SIZE="abc", RANK="0")),
        Case("torchrun's variables set by hand, without the address", "WORLD_SIZE=2 RANK=1 xt run ...",
             _distributed(WORLD_SIZE="2", RANK="1")),
        Case("training without an optimizer", "Runner(model, loss_fn)(loader) with the model in training mode",
             _runner_without_optimizer),
        Case("several optimizers without your own step", "F.train(..., optimizer={'g': opt_g, 'd': opt_d})",
             lambda: _train(optimizer={"g": None, "d": None})),
        Case("a loop option that your own step replaces", "F.train(..., step_fn=gan_step, clip_grad_norm=1.0)",
             _call(_train, step_fn=_own_step, clip_grad_norm=1.0)),
        Case("unwritable save_dir", "F.train('file/run', ...) where file is a file", _call(_train, save_dir="file/run")),
        Case("corrupt run configuration", "xt run --config corrupt.json", _cli("run", "--config", "corrupt.json"),
             cli=True),
        Case("Python config file with a syntax error", "xt train syntax.py", _cli("train", "syntax.py"), cli=True),
        Case("Python config file missing names", "xt train incomplete.py", _cli("train", "incomplete.py"), cli=True),
        Case("neither a run directory nor a config file", "xt test notes.txt", _cli("test", "notes.txt"), cli=True),
        Case("run directory without checkpoints", "xt test empty_run", _cli("test", "empty_run"), cli=True),
        Case("missing checkpoint", "load_checkpoint('good/checkpoints/nope.pt', model)",
             lambda: (_train("good"), _load("good/checkpoints/nope.pt"))),
        Case("checkpoint of another architecture", "load_checkpoint(path, model_with_5_classes)",
             _other_architecture),
        Case("truncated or corrupt checkpoint", "load_checkpoint(truncated_path, model)", _corrupt_checkpoint),
        Case("a file that is not a checkpoint", "load_checkpoint('notes.txt', model)", lambda: _load("notes.txt")),
        Case("a TorchScript model where a checkpoint belongs", "load_checkpoint('model.torchscript.pt', model)",
             _torchscript),
        Case("a directory where a checkpoint belongs", "load_checkpoint('empty_run', model)", lambda: _load("empty_run")),
        Case("resuming a run whose last.pt is corrupt (its best.pt is offered)", "xt run --resume cli_run",
             _corrupt_last_resumed, cli=True),
        Case("checkpoint holding arbitrary objects (code would run on unpickling)",
             "load_checkpoint(path, model)", _unsafe_checkpoint),
        Case("disk full while a checkpoint is written (simulated; the previous checkpoint is kept)", "save_checkpoint(...) during a failing fsync",
             _disk_full),
        Case("resuming with a different configuration", "F.train(..., lr=0.5, resume=True) of a run trained with lr=0.1",
             _different_resume),
        Case("inputs of another shape than the model's", "F.predict(cnn_for_rgb, [torch.randn(2, 1, 32, 32)])",
             _predict_shape),
        Case("an output path that cannot be written", "F.predict(model, inputs, out='file/preds.npy') where file is a file",
             lambda: _predict_to("file/preds.npy")),
        Case("a new run into a directory that holds one", "xt run --model mlp --data synthetic-classification --save-dir good",
             _cli("run", "--model", "mlp", "--data", "synthetic-classification", "--save-dir", "good"), cli=True),
        Case("a received run that names a module to import", "xt test received (its config.json: mean's fn='somewhere:fn')",
             _cli("test", "received"), cli=True),
        Case("a received run's config.py", "xt test received_py (a run of xt train, its config.py)",
             _cli("test", "received_py"), cli=True),
        Case("a second run into a directory a running run holds", "F.train('busy', ...) while a run trains in busy",
             _in_use),
        Case("resume and another run directory", "xt run --resume empty_run --save-dir x",
             _cli("run", "--resume", "empty_run", "--save-dir", "x"), cli=True),
    ]  # fmt: skip


def _inputs(x: Any) -> Any:
    """F.train of the 16-feature MLP on the inputs ``x`` (64 rows)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return _train(train_loader=DataLoader(TensorDataset(x, torch.zeros(64).long()), batch_size=32))


def _late_label() -> Any:
    import torch

    y = torch.zeros(64).long()
    y[40] = 7  # in the second batch: the first trains
    return _train(train_loader=_labels(y))


def _meta_model() -> Any:
    import torch

    with torch.device("meta"):  # shapes without values, as for loading large weights later
        model = _tiny()[0]
    return _train(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _lazy_model() -> Any:
    import torch

    model = torch.nn.Sequential(torch.nn.LazyLinear(3))  # its weights take their shape from its first input
    return _train(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _torchscript() -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.jit's deprecation
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_tiny()[0]), "model.torchscript.pt")
    return _load("model.torchscript.pt")


def _corrupt_last_resumed() -> str:
    from click.testing import CliRunner

    from xt_training.cli import cli

    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=64"]
    CliRunner().invoke(cli, [*run, "--epochs", "1", "--save-dir", "cli_run", "-q"])
    last = Path("cli_run/checkpoints/last.pt")
    data = last.read_bytes()
    last.unlink()  # a new file: best.pt, its hard link, stays intact
    last.write_bytes(data[:200])
    return _cli("run", "--resume", "cli_run", "--epochs", "2")()


def _predict_to(out: str) -> Any:
    import torch

    from xt_training.utils import functional as F

    return F.predict(_tiny()[0], [torch.randn(2, 16)], out=out)


def _load(path: str) -> Any:
    from xt_training import load_checkpoint

    return load_checkpoint(path, _tiny()[0])


@contextlib.contextmanager
def _scratch() -> Iterator[None]:
    """A temporary working directory with the bad files, quiet stdout, one torch thread."""
    import torch

    threads = torch.get_num_threads()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        torch.set_num_threads(1)
        try:
            _write_files()
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)


def outcomes() -> list[tuple[Case, str, str]]:
    """``(case, error class, one-line message)`` of every case, produced by running it."""
    from xt_training import registry

    results = []
    with _scratch():
        registry.reset()
        for case in cases():
            if case.cli:
                output = case.trigger().strip()
                lines = output.splitlines()
                if len(lines) != 1 or not lines[0].startswith("xt: error: "):
                    raise AssertionError(f"{case.shown!r} did not print one 'xt: error:' line: {output!r}")
                results.append((case, "exit status 2", lines[0]))
                continue
            try:
                case.trigger()
            except Exception as e:  # the point: every case raises
                message = str(e)
                if "\n" in message.strip():
                    raise AssertionError(
                        f"{case.shown!r} raised a message of several lines: {message!r}"
                    ) from e
                results.append((case, type(e).__name__, message))
            else:
                raise AssertionError(f"{case.shown!r} ({case.problem}) no longer raises an error")
        registry.reset()
    return results


def _cell(text: str) -> str:
    """``text`` as literal markdown table cell content."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal bold in torch's own messages
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


def errors_table() -> str:
    """Markdown: one row per bad input with the error and its message as this version prints it."""
    rows = ["| bad input | where | error | message |", "|---|---|---|---|"]
    for case, error, message in outcomes():
        rows.append(f"| {case.problem} | `{case.shown}` | `{error}` | {_cell(message)} |")
    return "\n".join(rows)
