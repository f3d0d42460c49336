"""The seed's API end to end: F.test, F.train, Runner, checkpoints, schedulers, batches, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import make_classification, mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import Runner, load_checkpoint, metrics
from xt_training.devices import accelerator
from xt_training.errors import BatchError, CheckpointError, ConfigError, LossError, NonFiniteLossError
from xt_training.utils import functional as F


# --- the seed's models, as working code ---------------------------------------------------------
class CVModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x):
        x = self.pool(TF.relu(self.conv1(x)))
        x = self.pool(TF.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = TF.relu(self.fc1(x))
        return self.fc2(x)


class RNNModel(nn.Module):
    """The seed's RNNModel with the hidden state sized by the batch and logits of the last step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(32, 128, 2, batch_first=True)
        self.fc = nn.Linear(128, 2)

    def forward(self, x):
        hidden = self.init_hidden(x.shape[0])
        x, hidden = self.rnn(x, hidden)
        return self.fc(x[:, -1])

    def init_hidden(self, batch_size):
        return torch.zeros(2, batch_size, 128)


def synthetic_images(n, seed=0):
    """10 classes, each a fixed random 3x32x32 template plus noise: learnable by a small CNN."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 1.5 * torch.randn(n, 3, 32, 32, generator=g), y


def synthetic_sequences(n, seed=0):
    """Sequences of 12 steps x 32 features; the label says whether feature 0 sums above zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, 32, generator=g)
    return x, (x[:, :, 0].sum(1) > 0).long()


# --- the seed's evaluation example ----------------------------------------------------------------
def test_seed_evaluation_example_resnet18_on_an_image_folder(tmp_path, capsys):
    from PIL import Image
    from torchvision import datasets, models, transforms

    g = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    test_dataset = datasets.ImageFolder(
        str(tmp_path / "images"), transform=transforms.Compose([transforms.Resize(64), transforms.ToTensor()])
    )
    test_loader = DataLoader(test_dataset, batch_size=4, num_workers=0)
    other_loader = DataLoader(test_dataset, batch_size=5)
    model = models.resnet18(weights=None)
    model.train()

    loss_fn = nn.CrossEntropyLoss()
    eval_metrics = {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "eps": metrics.EPS()}
    results = F.test(
        test_loaders={"test": test_loader, "other": other_loader},
        model=model,
        loss_fn=loss_fn,
        eval_metrics=eval_metrics,
    )

    assert set(results) == {"test", "other"}
    for values in results.values():
        assert set(values) == {"loss", "acc", "auc", "eps"}
        assert all(isinstance(v, float) for v in values.values())
        assert 0 <= values["acc"] <= 1 and 0 <= values["auc"] <= 1 and values["eps"] > 0
    # eval mode (BatchNorm running stats) gives the same values whatever the batch size
    assert results["test"]["loss"] == pytest.approx(results["other"]["loss"], rel=1e-4)
    assert results["test"]["auc"] == pytest.approx(results["other"]["auc"], abs=1e-6)
    assert model.training, "F.test restores the model's mode"
    out = capsys.readouterr().out
    assert "test" in out and "other" in out and "acc" in out


def test_seed_cnn_trains_on_synthetic_images(tmp_path):
    x, y = synthetic_images(1200)
    train = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=100)
    torch.manual_seed(0)
    model = CVModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = F.train(
        tmp_path,
        train,
        model,
        optimizer,
        4,
        nn.CrossEntropyLoss(),
        val_loader=val,
        eval_metrics={"acc": metrics.Accuracy()},
        quiet=True,
    )
    assert history[-1]["val/acc"] > 0.6  # chance is 0.1


def test_rnn_sequence_classifier_trains(tmp_path):
    x, y = synthetic_sequences(1200)
    train = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=100)
    torch.manual_seed(0)
    model = RNNModel()
    history = F.train(
        tmp_path,
        train,
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        4,
        nn.CrossEntropyLoss(),
        val_loader=val,
        eval_metrics={"acc": metrics.Accuracy()},
        quiet=True,
    )
    assert history[-1]["val/acc"] > 0.8  # chance is 0.5


# --- F.train: history, checkpoints, monitor ---------------------------------------------------------
def test_train_writes_history_and_checkpoints_that_round_trip(tabular, tmp_path):
    train, val, features, classes = tabular
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = F.train(
        tmp_path,
        train,
        model,
        optimizer,
        3,
        nn.CrossEntropyLoss(),
        val_loader=val,
        test_loaders={"test": val, "other": val},
        scheduler=scheduler,
        eval_metrics={"acc": metrics.Accuracy(), "cm": metrics.ConfusionMatrix()},
        monitor="val/acc",
        quiet=True,
    )
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.05, 0.025])  # stepped once per epoch
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test.other/acc", "val/cm"} <= set(
        history[0]
    )
    assert history[0]["test/acc"] == history[0]["test.other/acc"] == history[0]["val/acc"]
    assert json.loads((tmp_path / "history.json").read_text()) == history

    best_epoch = max(history, key=lambda r: r["val/acc"])["epoch"]
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert state["epoch"] == best_epoch and state["monitor"] == "val/acc" and state["mode"] == "max"
    assert state["global_step"] == best_epoch * len(train)
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == best_epoch
    assert state["xt_training_version"]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["history"] == history

    fresh = mlp()
    load_checkpoint(tmp_path / "checkpoints" / "last.pt", fresh)
    xs = torch.cat([x for x, _ in val])
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(xs), model(xs))
    results = F.test(
        {"val": val},
        mlp(),
        nn.CrossEntropyLoss(),
        {"acc": metrics.Accuracy()},
        checkpoint_path=tmp_path / "checkpoints" / "best.pt",
        quiet=True,
    )
    assert results["val"]["acc"] == pytest.approx(history[best_epoch - 1]["val/acc"])


def test_test_save_dir_writes_results_loadable_with_weights_only(tabular, tmp_path):
    _, val, _, _ = tabular
    model = mlp()
    F.test(
        {"test": val},
        model,
        nn.CrossEntropyLoss(),
        {"acc": metrics.Accuracy()},
        save_dir=tmp_path,
        quiet=True,
    )
    saved = torch.load(tmp_path / "results.pt", weights_only=True)
    xs = torch.cat([x for x, _ in val])
    with torch.no_grad():
        assert torch.equal(saved["test"]["preds"], model(xs))
    assert torch.equal(saved["test"]["labels"], torch.cat([y for _, y in val]))
    assert json.loads((tmp_path / "test_results.json").read_text())["test"]["acc"] >= 0


def test_f_test_with_nothing_to_report_says_so(tabular, tmp_path):
    with pytest.raises(ConfigError, match=(
        r"^F.test has nothing to report on loader 'test': no loss \(loss_fn=None, and the model's output carries no "
        r"\.loss\) and no eval_metrics; pass a loss_fn, eval_metrics=\{'acc': \.\.\.\}, or save_dir=\.\.\. to keep the predictions$"
    )):  # fmt: skip
        F.test({"test": tabular[1]}, mlp(), quiet=True)
    # the predictions it keeps are something to report
    assert F.test({"test": tabular[1]}, mlp(), save_dir=tmp_path, quiet=True) == {"test": {}}
    assert torch.load(tmp_path / "results.pt", weights_only=True)["test"]["preds"].shape == (128, 3)


def test_runner_trains_when_model_is_training_and_evaluates_otherwise(tabular):
    train, val, _, _ = tabular
    model = mlp()
    runner = Runner(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), quiet=True)
    before = [p.clone() for p in model.parameters()]
    model.eval()
    runner(val)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.train()
    runner(train)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert runner.global_step == len(train)
    model.eval()
    y_pred, y = runner(val, return_preds=True)
    assert y_pred.shape == (128, 3) and torch.equal(y, torch.cat([b for _, b in val]))


def test_schedulers_per_batch_and_plateau(tabular, tmp_path):
    train, val, _, _ = tabular
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    F.train(
        tmp_path / "a",
        train,
        model,
        opt,
        1,
        nn.CrossEntropyLoss(),
        scheduler=sched,
        scheduler_step="batch",
        quiet=True,
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 ** len(train))

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5)
    history = F.train(
        tmp_path / "b",
        train,
        model,
        opt,
        3,
        nn.CrossEntropyLoss(),
        val_loader=val,
        scheduler=plateau,
        eval_metrics={"acc": metrics.Accuracy()},
        monitor="val/acc",
        quiet=True,
    )
    assert plateau.best == max(row["val/acc"] for row in history)  # it received the monitored value


def test_nested_batches_and_forward_fn(tmp_path):
    x, y = make_classification(128)

    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, features, mask):
            return self.net(features * mask)

    batches = [
        {"inputs": {"features": x[i : i + 32], "mask": torch.ones(32, 16)}, "labels": (y[i : i + 32], "meta")}
        for i in range(0, 128, 32)
    ]

    def forward_fn(model, batch):
        assert batch["inputs"]["features"].device.type == "cpu"
        return model(**batch["inputs"]), batch["labels"][0]

    model = DictModel()
    history = F.train(
        tmp_path,
        batches,
        model,
        torch.optim.Adam(model.parameters(), 1e-2),
        2,
        nn.CrossEntropyLoss(),
        val_loader=batches,
        eval_metrics={"acc": metrics.Accuracy()},
        forward_fn=forward_fn,
        quiet=True,
    )
    assert history[-1]["val/acc"] > 0.5


def test_training_errors_are_never_swallowed(tabular, tmp_path):
    train, _, _, _ = tabular
    calls = []

    def flaky_loss(y_pred, y):
        calls.append(1)
        if len(calls) == 15:
            raise RuntimeError("boom from user code")
        return TF.cross_entropy(y_pred, y)

    model = mlp()
    with pytest.raises(RuntimeError, match="boom from user code"):
        F.train(
            tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 3, flaky_loss, quiet=True
        )


def test_console_output_is_plain_lines_when_not_a_terminal(tabular, tmp_path, capsys):
    train, val, _, _ = tabular
    model = mlp()
    F.train(
        tmp_path,
        train,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        2,
        nn.CrossEntropyLoss(),
        val_loader=val,
        eval_metrics={"acc": metrics.Accuracy()},
    )
    out = capsys.readouterr().out
    assert "\r" not in out
    assert "epoch 2" in out and "val" in out and "acc" in out


# --- bad input: each gets a one-line message that names the problem ---------------------------
def train_with(tmp_path, loader, loss_fn=TF.cross_entropy, epochs=1, model=None, **kw):
    model = model or mlp()
    return F.train(
        tmp_path,
        loader,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs,
        loss_fn,
        quiet=True,
        **kw,
    )


def test_loader_yielding_a_non_pair(tmp_path):
    x, _ = make_classification(64)
    with pytest.raises(
        BatchError,
        match=r"must yield \(x, y\) pairs or dicts, but it yielded Tensor\(32, 16\) float32; pass forward_fn="
        r"lambda model, batch: \(model\(batch\[0\]\), batch\[1\]\) to unpack",
    ):
        train_with(tmp_path, DataLoader(x, batch_size=32))
    # dict batches: tests/test_batches.py


def test_empty_loader(tmp_path):
    with pytest.raises(ConfigError, match="loader 'train' yielded no batches"):
        train_with(
            tmp_path,
            DataLoader(
                TensorDataset(torch.zeros(3, 16), torch.zeros(3).long()), batch_size=4, drop_last=True
            ),
        )


def test_non_scalar_loss(tabular, tmp_path):
    with pytest.raises(
        LossError, match=r"loss_fn must return a scalar tensor, but returned Tensor\(32,\) float32; reduce it"
    ):
        train_with(tmp_path, tabular[0], nn.CrossEntropyLoss(reduction="none"))
    # a scalar that is not a tensor (here in an evaluation pass, where no backward would catch it)
    for value, described in ((np.float64(0.5), "float64"), (0.5, "float")):
        runner = Runner(mlp().eval(), lambda y_pred, y, value=value: value, device="cpu", quiet=True)
        with pytest.raises(LossError, match=f"loss_fn must return a scalar tensor, but returned {described}"):
            runner(tabular[1])


def test_a_forward_fn_must_return_a_pair(tabular, tmp_path):
    # returning only y_pred: with batches of two, `y_pred, y = out` unpacked its rows and trained on them
    x, y = make_classification(64)
    pairs = DataLoader(TensorDataset(x, y), batch_size=2)
    message = (
        r"forward_fn must return a \(y_pred, y\) pair, but returned Tensor\(2, 3\) float32; e.g. forward_fn="
    )
    with pytest.raises(BatchError, match=message):
        train_with(tmp_path, pairs, forward_fn=lambda model, batch: model(batch[0]))
    with pytest.raises(BatchError, match=message):
        F.predict(mlp(), pairs, forward_fn=lambda model, batch: model(batch[0]))
    # a list of two is a pair too
    train_with(tmp_path, tabular[0], forward_fn=lambda model, batch: [model(batch[0]), batch[1]])


def test_a_loss_that_cannot_train_is_named(tabular, tmp_path):
    with pytest.raises(LossError, match="loss_fn returned None in training; it must return a scalar tensor"):
        train_with(tmp_path, tabular[0], lambda y_pred, y: None)
    with pytest.raises(
        LossError, match=r"the loss does not require grad, .* \(not \.item\(\) or a new tensor\)"
    ):
        train_with(tmp_path, tabular[0], lambda y_pred, y: torch.tensor(0.5))
    frozen = mlp().requires_grad_(False)
    with pytest.raises(LossError, match="the model needs parameters with requires_grad=True"):
        Runner(frozen, nn.CrossEntropyLoss(), torch.optim.SGD(frozen.parameters(), lr=0.1), quiet=True)(
            tabular[0]
        )

    # an error of the model in backward stays as it is
    class Inplace(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            h = self.net(x).sigmoid()
            h.mul_(2)  # modifies the output sigmoid saved for backward
            return h

    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        train_with(tmp_path, tabular[0], loss_fn=lambda y_pred, y: y_pred.sum(), model=Inplace())


def test_inputs_and_labels_that_do_not_fit_the_model_are_named(tmp_path):
    """Found in the batch the model or the loss fails on (free until then): one line naming what and the fix."""
    x, y = make_classification(64)

    def train(x, y, model=None, **kw):
        return train_with(
            tmp_path / str(len(list(tmp_path.iterdir()))),
            DataLoader(TensorDataset(x, y), batch_size=32),
            model=model,
            **kw,
        )

    with pytest.raises(BatchError, match=(
        r"^epoch 1, batch 1 of loader 'train': the model failed \(mat1 and mat2 shapes cannot be multiplied \(32x10 and 16x32\)\): "
        r"the inputs Tensor\(32, 10\) float32 have 10 features, but the model's first layer Linear\(16, 32\) takes 16; "
        r"give it inputs of 16 features, or build the model for 10$"
    )):  # fmt: skip
        train(x[:, :10], y)
    with pytest.raises(BatchError, match=(
        r"^epoch 1, batch 1 of loader 'train': the model failed \(.*\): the inputs are float64 and the model's weights "
        r"float32; convert the inputs to float32 \(x.to\(torch.float32\), e.g. in the Dataset\), or the model with model.to\(torch.float64\)$"
    )):  # fmt: skip
        train(x.double(), y)
    with pytest.raises(
        BatchError,
        match=r"the inputs Tensor\(32, 1, 32, 32\) float32 have 1 channels, but the model's first layer Conv2d\(3, 6\) takes 3",
    ):
        train(torch.randn(64, 1, 32, 32), y, model=CVModel())
    late = y.clone()
    late[40] = 7  # in the second batch: the first trained well
    with pytest.raises(LossError, match=(
        r"^epoch 1, batch 2 of loader 'train': label 7 is out of range for the model's 3 outputs \(classes 0 to 2\); "
        r"check the data's labels, or build the model with 8 or more outputs$"
    )):  # fmt: skip
        train(x, late, loss_fn=nn.CrossEntropyLoss())
    negative = y.clone()
    negative[:32] = torch.where(
        negative[:32] == 0, -100, negative[:32]
    )  # CrossEntropyLoss's ignore_index: fine
    negative[3] = -1
    with pytest.raises(LossError, match=r"^epoch 1, batch 1 of loader 'train': label -1 is out of range"):
        train(x, negative, loss_fn=nn.CrossEntropyLoss())

    class Broken(nn.Module):  # inputs that fit, a model that fails: its own error, as it is
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            raise RuntimeError("a bug in forward")

    with pytest.raises(RuntimeError, match="^a bug in forward$"):
        train(x, y, model=Broken())


def test_a_loss_that_does_not_fit_the_outputs_names_both(tabular, tmp_path):
    with pytest.raises(
        LossError,
        match=r"^loss_fn failed on y_pred Tensor\(32, 3\) float32 and y Tensor\(32,\) int64 \(The size of tensor a "
        r"\(3\) must match .*\); give a loss that fits the model's outputs and the targets$",
    ):
        with pytest.warns(UserWarning, match="target size"):  # torch's own warning comes first
            train_with(tmp_path, tabular[0], nn.MSELoss())
    # inputs the model was not built for are named as such (test_inputs_and_labels_that_do_not_fit_...)
    with pytest.raises(
        BatchError, match="have 16 features, but the model's first layer Linear\\(5, 32\\) takes 5"
    ):
        train_with(tmp_path, tabular[0], model=mlp(features=5))


@pytest.mark.skipif(accelerator() is not None, reason="checks the error without an accelerator")
def test_a_cuda_device_without_a_gpu_is_a_config_error(tabular, tmp_path):
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available: torch .* finds no cuda device here; use "
                       r"device 'cpu', or leave the device out \(here: cpu\)"):  # fmt: skip
        train_with(tmp_path, tabular[0], device="cuda")
    with pytest.raises(
        ConfigError, match=r"device 'mps:0' is not available: torch .* finds no mps device here"
    ):
        train_with(tmp_path, tabular[0], device="mps:0")


def test_every_batch_skipped_is_an_error(tabular, tmp_path):
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite in all 12 batches of loader 'train' \(epoch 1, nothing was trained\); lower",
    ):
        train_with(tmp_path, tabular[0], lambda y_pred, y: y_pred.sum() * float("nan"), nonfinite_loss="skip")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"clip_grad_norm": -1.0},
            r"clip_grad_norm must be a positive number or None \(no clipping\), not -1.0",
        ),
        ({"clip_grad_norm": 0}, "clip_grad_norm must be a positive number or None"),
        ({"clip_grad_value": float("inf")}, "clip_grad_value must be a positive number or None"),
        (
            {"eval_metrics": {"loss": metrics.Accuracy()}},
            "the metric name 'loss' is the pass's loss; give the",
        ),
        ({"loss_fn": nn.CrossEntropyLoss}, r"loss_fn is the class CrossEntropyLoss; pass an instance, e.g\."),
        ({"optimizer": torch.optim.SGD}, "optimizer is the class SGD; pass an instance"),
        ({"scheduler": "step"}, r"scheduler must be a torch LR scheduler \(with step\(\)\), not str"),
        (
            {"scheduler": "plateau", "scheduler_step": "batch"},
            "ReduceLROnPlateau steps on a monitored value once",
        ),
        (
            {"scheduler": "plateau", "monitor": "train/acc"},
            r"ReduceLROnPlateau\(mode='min'\) steps on 'train/acc', which is a 'max' value here; make them",
        ),
        (
            {"val_loader": "dict"},
            "val_loader is one loader, not a dict; evaluate on more loaders with test_loaders=",
        ),
        ({"train_loader": None}, "train_loader must be a loader that yields batches"),
        ({"loggers": "csv"}, r"loggers must be a list, e.g. loggers=\['csv'\], not str"),
        ({"callbacks": object()}, r"callbacks must be a list, e.g. callbacks=\[...\], not object"),
        ({"save_dir": None}, r"save_dir must be a directory path \(str or Path\), not NoneType"),
        ({"model": None}, r"^model must be a torch.nn.Module, not NoneType$"),
        ({"model": "mlp"}, r"^model must be a torch.nn.Module, not str; build it first, e.g. xt_training.create_model\('mlp'\)$"),
        ({"model": nn.Linear}, r"^model is the class Linear; pass an instance"),
        ({"model": nn.Sequential(nn.LazyLinear(3))}, r"^the model has uninitialized parameters \(a lazy module, e.g. LazyLinear, takes its shape from its first input\); run one batch through it first"),
        ({"model": "meta"}, r"^the model's weights are on the meta device \(shapes without values\); give them values before training: model.to_empty"),
        ({"optimizer": "another model's"}, r"^the optimizer updates none of the model's parameters \(it was built over another model's\), so training would change nothing; build it over this model: SGD\(model.parameters\(\), ...\)$"),
        ({"scheduler": "the optimizer"}, r"^scheduler is an optimizer \(SGD\), not an LR scheduler; pass a scheduler built over the optimizer, e.g. scheduler=torch.optim.lr_scheduler.StepLR"),
        ({"scheduler": "another optimizer's"}, r"^the scheduler \(StepLR\) changes the learning rate of another optimizer than the one passed; build it over"),
        ({"eval_metrics": {"acc": "accuracy"}}, r"^metric 'acc' is the name 'accuracy', not a metric; pass the metric itself, e.g. \{'acc': xt_training.create_metric\('accuracy'\)\}"),
        ({"eval_metrics": {"acc": 3}}, r"^metric 'acc' is the int 3, not a metric; pass an object with update\(y_pred, y\), compute\(\) and reset\(\)"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_before_training(tabular, tmp_path, options, message):
    model = mlp()
    if options.get("model") == "meta":  # built without values, as for loading large weights later
        with torch.device("meta"):
            options = {"model": mlp()}
    if options.get("optimizer") == "another model's":  # the loss would stay as it is, epoch after epoch
        options = {"optimizer": torch.optim.SGD(mlp().parameters(), lr=0.1)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if options.get("scheduler") == "the optimizer":  # it has step() too: each epoch would step it once more
        options = {"scheduler": torch.optim.SGD(model.parameters(), lr=0.1)}
    if options.get("scheduler") == "another optimizer's":  # this optimizer's learning rate would never change
        other = torch.optim.SGD(model.parameters(), lr=0.1)
        options = {"scheduler": torch.optim.lr_scheduler.StepLR(other, step_size=1)}
    args = {
        "save_dir": tmp_path / "run",
        "train_loader": tabular[0],
        "model": model,
        "optimizer": optimizer,
        "epochs": 1,
        "loss_fn": nn.CrossEntropyLoss(),
        "quiet": True,
        **options,
    }
    if "monitor" in options:
        args["eval_metrics"] = {"acc": metrics.Accuracy()}
    if args.get("scheduler") == "plateau":
        args["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    if args.get("val_loader") == "dict":
        args["val_loader"] = {"val": tabular[1]}
    with pytest.raises(ConfigError, match=message):
        F.train(**args)
    assert not (tmp_path / "run" / "checkpoints" / "crash.pt").exists()  # it failed before training


@pytest.mark.parametrize("epochs", [0, -1, 1.5, "3"])
def test_bad_epochs(tabular, tmp_path, epochs):
    with pytest.raises(ConfigError, match=f"epochs must be a positive integer, got {epochs!r}"):
        train_with(tmp_path, tabular[0], epochs=epochs)


def test_unwritable_save_dir(tabular, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="save_dir .*file/run' is not writable .*choose another directory"):
        train_with(tmp_path / "file" / "run", tabular[0])


def test_unknown_monitor_suggests_names(tabular, tmp_path):
    with pytest.raises(
        ConfigError, match="monitor 'val/accuracy' is not a value of this run; did you mean 'val/acc'"
    ):
        train_with(
            tmp_path,
            tabular[0],
            val_loader=tabular[1],
            eval_metrics={"acc": metrics.Accuracy()},
            monitor="val/accuracy",
        )


def test_a_column_of_a_metric_with_several_values_is_monitored(tabular, tmp_path):
    # F1(average=None): one value per class, val/f1/0, val/f1/1, ...; each improves as F1 does
    history = train_with(
        tmp_path / "a", tabular[0], val_loader=tabular[1], monitor="val/f1/1", epochs=3,
        eval_metrics={"f1": metrics.F1(average=None)},
    )  # fmt: skip
    best = torch.load(tmp_path / "a" / "checkpoints" / "best.pt", weights_only=True)
    assert best["mode"] == "max" and best["epoch"] == max(history, key=lambda row: row["val/f1/1"])["epoch"]
    # the metric's own name is none of its values: the first evaluation names them
    with pytest.raises(
        ConfigError,
        match=r"^monitor 'val/f1' was not reported in epoch 1, which reported val/loss, val/f1/0, ",
    ):
        train_with(tmp_path / "b", tabular[0], val_loader=tabular[1], monitor="val/f1",
                   eval_metrics={"f1": metrics.F1(average=None)})  # fmt: skip
    with pytest.raises(ConfigError, match=r"^monitor 'val/f1/9' was not reported in epoch 1, which reported"):
        train_with(tmp_path / "c", tabular[0], val_loader=tabular[1], monitor="val/f1/9",
                   eval_metrics={"f1": metrics.F1(average=None)})  # fmt: skip


def test_a_monitored_function_metric_needs_its_direction(tabular, tmp_path):
    def error(y_pred, y):  # an error rate: lower is better, which nothing tells the loop
        return (y_pred.argmax(1) != y).float().mean()

    with pytest.raises(ConfigError, match=r"^which way 'val/err' improves is unknown: metric 'err' \(Mean\)"):
        train_with(
            tmp_path / "a", tabular[0], val_loader=tabular[1], eval_metrics={"err": error}, monitor="val/err"
        )
    history = train_with(
        tmp_path / "b", tabular[0], val_loader=tabular[1], monitor="val/err", epochs=3,
        eval_metrics={"err": metrics.Mean(error, higher_is_better=False)},
    )  # fmt: skip
    best = torch.load(tmp_path / "b" / "checkpoints" / "best.pt", weights_only=True)
    assert best["mode"] == "min" and best["epoch"] == min(history, key=lambda row: row["val/err"])["epoch"]


def test_non_finite_loss_names_epoch_step_and_loader(tabular, tmp_path):
    calls = []

    def loss_fn(y_pred, y):
        calls.append(1)
        loss = TF.cross_entropy(y_pred, y)
        return loss * float("nan") if len(calls) == 7 else loss

    with pytest.raises(NonFiniteLossError, match="the loss is nan at epoch 1, step 7 of loader 'train'"):
        train_with(tmp_path, tabular[0], loss_fn, log_every_n_steps=5)
    calls.clear()  # a Runner called outside F.train has no epochs to name
    model = mlp()
    runner = Runner(
        model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), quiet=True, log_every_n_steps=5
    )
    with pytest.raises(NonFiniteLossError, match="the loss is nan at step 7 of loader 'train'"):
        runner(tabular[0])


def test_missing_and_mismatched_checkpoints(tabular, tmp_path):
    train_with(tmp_path, tabular[0])
    with pytest.raises(
        CheckpointError, match="checkpoint .*nope.pt' does not exist; checkpoints there: best.pt, last.pt"
    ):
        load_checkpoint(tmp_path / "checkpoints" / "nope.pt", mlp())
    with pytest.raises(CheckpointError, match=r"does not fit Sequential: size mismatch for 2.weight"):
        load_checkpoint(tmp_path / "checkpoints" / "last.pt", mlp(classes=5))
    with pytest.raises(
        CheckpointError,
        match=r"does not fit Linear: unexpected keys 0.weight, 0.bias, 2.weight, 2.bias; missing keys|missing keys weight, bias",
    ):
        load_checkpoint(tmp_path / "checkpoints" / "last.pt", nn.Linear(16, 3))


def test_corrupt_and_unsafe_checkpoints(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": mlp().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"ckpt.pt' is truncated or corrupt \(.*\); retrain$"):
        load_checkpoint(path, mlp())
    torch.save(
        {"model": mlp().state_dict()}, tmp_path / "other.pt"
    )  # the fix names the checkpoints beside it
    with pytest.raises(CheckpointError, match=r"\); use another checkpoint \(other.pt there\) or retrain$"):
        load_checkpoint(path, mlp())

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": mlp().state_dict(), "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors .* was refused"):
        load_checkpoint(path, mlp())
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    """A TorchScript or exported model is no corrupt checkpoint, nor is a directory a missing one."""
    torch.jit.save(torch.jit.script(mlp()), tmp_path / "model.torchscript.pt")
    torch.export.save(torch.export.export(mlp(), (torch.randn(2, 16),)), tmp_path / "model.pt2")
    for name, saved, loader in [
        ("model.torchscript.pt", r"a TorchScript model \(torch.jit.save\)", "torch.jit.load"),
        ("model.pt2", r"an exported program \(torch.export.save\)", "torch.export.load"),
    ]:
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=(
            f"^'{re.escape(str(path))}' is {saved}, a whole model, not a checkpoint of weights; load it with "
            f"{loader}\\('{re.escape(str(path))}'\\), or pass a checkpoint such as RUN_DIR/checkpoints/best.pt$"
        )):  # fmt: skip
            load_checkpoint(path, mlp())
    train_with(tmp_path / "run", DataLoader(TensorDataset(*make_classification(64)), batch_size=32))
    with pytest.raises(CheckpointError, match=(
        r"^'.*run' is a directory, not a checkpoint file; pass a checkpoint file, one of its: .*run/checkpoints/best.pt, "
        r".*run/checkpoints/last.pt$"
    )):  # fmt: skip
        load_checkpoint(tmp_path / "run", mlp())
    with pytest.raises(
        CheckpointError,
        match=r"^'.*empty' is a directory, not a checkpoint file; pass a checkpoint file, e.g. RUN_DIR/checkpoints/best.pt$",
    ):
        (tmp_path / "empty").mkdir()
        load_checkpoint(tmp_path / "empty", mlp())
    # F.test's checkpoint_path takes a run directory; its checkpoints/ folder is not one
    with pytest.raises(
        CheckpointError,
        match=r"^'.*run/checkpoints' is a folder of checkpoints, not a run directory; pass one of them: .*best.pt, .*last.pt$",
    ):
        F.test({"test": DataLoader(TensorDataset(*make_classification(64)), batch_size=32)}, mlp(), TF.cross_entropy,
               checkpoint_path=tmp_path / "run" / "checkpoints", quiet=True)  # fmt: skip


def test_runner_without_optimizer_in_training_mode(tabular):
    with pytest.raises(ConfigError, match="training mode, so the Runner needs an optimizer"):
        Runner(mlp(), nn.CrossEntropyLoss(), quiet=True)(tabular[0])


def test_results_pt_keeps_nested_outputs(tmp_path):
    x, y = make_classification(64)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            logits = self.net(x)
            return {"logits": logits, "boxes": [row for row in logits[:, :2]]}

    def forward_fn(model, batch):
        out = model(batch[0])
        return out, batch[1]

    def loss_fn(y_pred, y):
        return TF.cross_entropy(y_pred["logits"], y)

    F.test({"test": DataLoader(TensorDataset(x, y), batch_size=16)}, TwoHeads(), loss_fn, save_dir=tmp_path,
           forward_fn=forward_fn, quiet=True)  # fmt: skip
    saved = torch.load(tmp_path / "results.pt", weights_only=True)["test"]
    assert saved["preds"]["logits"].shape == (64, 3) and len(saved["preds"]["boxes"]) == 64
    assert torch.equal(saved["labels"], y)
