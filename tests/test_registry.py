"""The plugin registry: smoke tests over every registered name, error messages, and plugin loading control.

Plugins here are real modules and real (fake-installed) distributions: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``sys.path`` is what ``pip install`` leaves behind, and ``importlib.metadata`` finds it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xt_training import registry
from xt_training.config import DATA_INFO_KEYS
from xt_training.errors import ConfigError

SYNTHETIC = ("synthetic-classification", "synthetic-images", "synthetic-sequences")
NO_AUTOLOAD = {"XT_DISABLE_PLUGIN_AUTOLOAD": "1"}


pytestmark = pytest.mark.usefixtures("fresh_registry")  # conftest


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 4, size=(20, 24)) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(*size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def write_csv(path: Path, rows: int = 40) -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    lines = ["a,b,label,c"] + [
        f"{r[0]:.4f},{r[1]:.4f},{'yes' if r[0] + r[1] > 0 else 'no'},{r[2]:.4f}" for r in x.tolist()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def data_options(name: str, tmp_path: Path) -> dict:
    """Small options for each built-in data set; other (plugin) data sets get their defaults."""
    if name in SYNTHETIC:
        return {"n_samples": 64, "batch_size": 16}
    if name == "csv":
        return {"path": str(write_csv(tmp_path / "table.csv")), "batch_size": 8}
    if name == "image-folder":
        return {"root": str(write_image_folder(tmp_path / "images")), "image_size": 16, "batch_size": 4}
    return {}


# --- every registered name ---------------------------------------------------------------------------------
def classification(kind: str) -> list[str]:
    """The names of ``kind`` for classification; other problem shapes (metadata ``task``) are tested in test_shapes.py."""
    table = registry.current().table(kind)
    return [
        n for n in registry.names(kind) if table[n].metadata.get("task", "classification") == "classification"
    ]


@pytest.mark.parametrize("name", classification("data"))
def test_every_data_set_yields_batches_and_info(name, tmp_path):
    data = registry.create_data(name, **data_options(name, tmp_path))
    assert isinstance(data, registry.Data)
    assert "train" in data.loaders
    x, y = next(iter(data.loaders["train"]))
    assert x.shape[0] == y.shape[0] > 0
    assert data.info["num_classes"] > int(y.max())
    if "in_features" in data.info:
        assert x[0].numel() == data.info["in_features"]
    registry.create("loss", data.loss)  # the suggestions are registered names
    for metric in data.metrics:
        registry.create_metric(metric)


def fitting_data(model: str) -> str:
    """The first synthetic data set that gives every fact the model takes from data."""
    params = registry.current().entry("model", model).parameters()
    for name in SYNTHETIC:
        info = registry.create_data(name, n_samples=8).info
        if all(k in info for k in DATA_INFO_KEYS if k in params):
            return name
    pytest.fail(f"no synthetic data set fits model {model!r}")


@pytest.mark.parametrize("name", classification("model"))
def test_every_model_runs_forward_and_backward_on_its_data(name):
    data = registry.create_data(fitting_data(name), n_samples=32, batch_size=8)
    model = registry.create_model(name, **registry.accepts("model", name, data.info))
    x, y = next(iter(data.loaders["train"]))
    logits = model(x)
    assert logits.shape == (8, data.info["num_classes"])
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


METRIC_OPTIONS = {"mean": {"fn": "torch.nn.functional:cross_entropy"}}


@pytest.mark.parametrize("name", classification("metric"))
def test_every_metric_computes_over_several_updates(name):
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(48, 6, generator=g), torch.randint(0, 6, (48,), generator=g)
    metric = registry.create_metric(name, **METRIC_OPTIONS.get(name, {}))
    for part in (slice(0, 20), slice(20, 48)):
        metric.update(logits[part], y[part])
    value = metric.compute()
    value = value.tolist() if isinstance(value, torch.Tensor) else value
    flat = torch.tensor(value, dtype=torch.float64).flatten()
    assert flat.numel() and torch.isfinite(flat).all(), value
    metric.reset()


def test_metric_values_match_the_classes_they_wrap():
    from xt_training import metrics

    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(64, 4, generator=g), torch.randint(0, 4, (64,), generator=g)
    for name, direct in (("accuracy", metrics.Accuracy()), ("top-k-accuracy", metrics.TopKAccuracy(k=2))):
        by_name = registry.create_metric(name, **({"k": 2} if name == "top-k-accuracy" else {}))
        for m in (by_name, direct):
            m.update(logits, y)
        assert float(by_name.compute()) == float(direct.compute())
    loss = registry.create_metric("loss", loss="cross-entropy")
    loss.update(logits, y)
    assert float(loss.compute()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))


def loss_inputs(name: str):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    binary = torch.randint(0, 2, (8,), generator=g).float()
    return {
        "cross-entropy": (logits, labels),
        "nll": (logits.log_softmax(1), labels),
        "bce-with-logits": (logits[:, 0], binary),
        "bce": (logits[:, 0].sigmoid(), binary),
        "kl-div": (logits.log_softmax(1), logits.softmax(1)),
    }.get(name, (logits, torch.randn(8, 3, generator=g)))


@pytest.mark.parametrize("name", classification("loss"))
def test_every_loss_returns_a_scalar(name):
    options = {"reduction": "batchmean"} if name == "kl-div" else {}
    value = registry.create("loss", name, **options)(*loss_inputs(name))
    assert value.ndim == 0 and math.isfinite(float(value))


@pytest.mark.parametrize("name", registry.names("optimizer"))
def test_every_optimizer_steps(name):
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    optimizer = registry.create("optimizer", name, params=model.parameters(), lr=0.1)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", registry.names("scheduler"))
def test_every_scheduler_steps_with_the_run_context(name):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    context = {"optimizer": optimizer, "epochs": 6, "steps_per_epoch": 5}
    scheduler = registry.create("scheduler", name, **registry.accepts("scheduler", name, context))
    interval = registry.current().entry("scheduler", name).metadata.get("interval", "epoch")
    assert interval in ("epoch", "batch")
    for _ in range(30 if interval == "batch" else 6):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
    assert "state_dict" in dir(scheduler)


@pytest.mark.parametrize("name", registry.names("logger"))
def test_every_logger_takes_save_dir_and_a_run(name, tmp_path):
    logger = registry.create_logger(name, save_dir=tmp_path)
    call = {
        "start_run": ({"epochs": 1},),
        "log_metrics": ({"train/loss": 0.5}, 1),
        "end_epoch": (1, {"epoch": 1, "train/loss": 0.5}, 1),
        "end_run": ("completed",),
        "close": (),
    }
    for method, args in call.items():
        getattr(logger, method, lambda *a: None)(*args)


@pytest.mark.parametrize("name", registry.names("callback"))
def test_every_callback_builds_with_defaults(name):
    assert registry.create("callback", name) is not None


def test_every_kind_is_listed_with_descriptions():
    for kind in registry.KINDS:
        for entry in registry.entries(kind):
            assert entry.plugin and entry.distribution == "xt-training", entry
            assert entry.description and "``" not in entry.description, entry
    assert (
        registry.names("models")
        == registry.names("model")
        == ["cnn", "mlp", "rnn", "rnn-tagger", "text-gru", "unet"]
    )
    assert registry.list_models("*n") == ["cnn", "rnn"]
    assert registry.list_metrics("top-*") == ["top-k-accuracy"]
    assert set(registry.list_loggers()) >= {"console", "tensorboard", "csv", "jsonl"}
    assert "synthetic-images" in registry.list_data()


# --- the built-ins behave as documented ---------------------------------------------------------------------
def test_cnn_defaults_are_the_seed_cvmodel():
    model = registry.create_model("cnn")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (10, 120), (10,)]


def test_synthetic_data_is_seeded_and_independent_of_the_global_rng():
    torch.manual_seed(1)
    a = registry.create_data("synthetic-images", n_samples=40, seed=3)
    torch.manual_seed(2)
    b = registry.create_data("synthetic-images", n_samples=40, seed=3)
    c = registry.create_data("synthetic-images", n_samples=40, seed=4)
    ta, tb, tc = (d.loaders["val"].dataset.tensors[0] for d in (a, b, c))
    assert torch.equal(ta, tb) and not torch.equal(ta, tc)
    assert [len(d.loaders[s].dataset) for d in (a,) for s in ("train", "val", "test")] == [24, 8, 8]


def test_csv_data_maps_labels_and_reports_bad_rows(tmp_path):
    data = registry.create_data("csv", path=str(write_csv(tmp_path / "t.csv")), test_fraction=0.25)
    assert data.info["classes"] == ["no", "yes"] and data.info["features"] == ["a", "b", "c"]
    assert sorted(data.loaders) == ["test", "train", "val"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n1.0,x\noops,y\n")
    with pytest.raises(ConfigError, match=r"bad.csv, line 3, column 'a': 'oops' is not a number"):
        registry.create_data("csv", path=str(bad))
    with pytest.raises(ConfigError, match=r"has no column 'target'; columns: a, label"):
        registry.create_data("csv", path=str(bad), label="target")
    with pytest.raises(ConfigError, match="does not exist"):
        registry.create_data("csv", path=str(tmp_path / "missing.csv"))


def test_image_folder_with_split_folders_and_errors(tmp_path):
    write_image_folder(tmp_path / "split" / "train", per_class=3)
    write_image_folder(tmp_path / "split" / "test", per_class=2)
    data = registry.create_data("image-folder", root=str(tmp_path / "split"), image_size=16)
    assert sorted(data.loaders) == ["test", "train"] and data.info["classes"] == ["cat", "dog"]
    x, _ = next(iter(data.loaders["test"]))
    assert x.shape[1:] == (3, 16, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="one folder of images per class"):
        registry.create_data("image-folder", root=str(tmp_path / "empty"))


def test_image_folder_workers_fit_the_machine(tmp_path, monkeypatch):
    from xt_training.builtins.datasets import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_workers() == 8  # 15 cores left beside the loop, capped at 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3  # 4 cores per process under torchrun, one of them for the loop
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers() == 0  # one core: the loop loads the images itself

    root = write_image_folder(tmp_path / "images", per_class=6)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    data = registry.create_data("image-folder", root=str(root), image_size=16, batch_size=4)
    train = data.loaders["train"]
    assert (train.num_workers, train.persistent_workers) == (1, True)
    assert sum(len(y) for _, y in train) == len(train.dataset)  # images decoded in a worker process
    assert (
        registry.create_data("image-folder", root=str(root), num_workers=0).loaders["train"].num_workers == 0
    )
    with pytest.raises(ConfigError, match="num_workers must be >= 0"):
        registry.create_data("image-folder", root=str(root), num_workers=-1)


# --- error messages -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: registry.create_model("cnnn"),
            r"^unknown model 'cnnn'; did you mean 'cnn'\? see `xt list models`$",
        ),
        (
            lambda: registry.create_model("zzz"),
            r"^unknown model 'zzz'; choose one of: cnn, mlp, rnn, rnn-tagger, text-gru, unet; see `xt list models`$",
        ),
        (lambda: registry.create_metric("acuracy"), r"did you mean 'accuracy'"),
        (
            lambda: registry.names("modle"),
            r"^unknown kind 'modle'; did you mean 'model'\? kinds: models, data, ",
        ),
        (
            lambda: registry.create(
                "callback",
                "x",
            ),
            r"unknown callback 'x'",
        ),
        (
            lambda: registry.create_model("cnn", hiden=3),
            r"^model 'cnn' has no option 'hiden'; did you mean 'hidden'\? options: in_channels=3, ",
        ),
        (
            lambda: registry.create_model("cnn", hidden="big"),
            r"^model 'cnn': option hidden='big' must be int \| Sequence\[int\], not str; options: ",
        ),
        (
            lambda: registry.create_model("rnn", cell="lstmm"),
            r"option cell='lstmm' must be 'rnn' \| 'lstm' \| 'gru'",
        ),
        (
            lambda: registry.create_model("mlp", in_features=2.5),
            r"option in_features=2.5 must be int, not float",
        ),
        (
            lambda: registry.create_data("csv"),
            r"^data 'csv' needs option 'path'; options: path, label='label'",
        ),
        (lambda: registry.create_model("cnn", image_size=8), r"image_size 8 is too small for 2 conv blocks"),
        (
            lambda: registry.create("scheduler", "cosine", optimizer=None),
            r"scheduler 'cosine' needs T_max or epochs",
        ),
        (
            lambda: registry.create_metric("mean", fn="nowhere:fn"),
            r"cannot load 'nowhere:fn': ModuleNotFoundError",
        ),
    ],
)
def test_error_messages_name_the_problem_and_the_fix(call, message):
    with pytest.raises(ConfigError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_options_of_any_type_pass_where_annotations_allow():
    assert isinstance(registry.create_model("cnn", channels=[4, 8], image_size=(32, 32)), torch.nn.Module)
    opt = registry.create("optimizer", "sgd", params=torch.nn.Linear(2, 2).parameters(), lr=1, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 1


def test_info_describes_plugin_and_options():
    info = registry.info("model", "rnn")
    assert (info["plugin"], info["distribution"]) == ("xt_training.builtins.models", "xt-training")
    assert info["options"]["cell"] == {
        "required": False,
        "default": "gru",
        "type": "'rnn' | 'lstm' | 'gru'",
        "description": "the recurrent cell: 'rnn', 'lstm' or 'gru'.",
    }
    assert info["factory"] == "xt_training.builtins.nets:RNNClassifier"
    assert registry.info("scheduler", "one-cycle")["metadata"] == {"interval": "batch"}
    json.dumps(registry.info("metric", "accuracy"), default=repr)


# --- plugins: loading, failures, control --------------------------------------------------------------------
def install_fake(
    root: Path, dist: str, entry_point: str, module: str, source: str, version: str = "1.0"
) -> None:
    """What `pip install` leaves: the module and a dist-info directory with the entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[xt_training]\n{entry_point} = {module}\n")


GOOD = """
    from xt_training.hookspecs import hookimpl

    def tiny(*, num_classes: int = 2, width: int = 4):
        '''A tiny linear model.'''
        import torch
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    @hookimpl
    def register_models(register):
        register("tiny", tiny)
        register("tiny-lazy", "{module}:tiny", description="the same, imported on use")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path where fake distributions are installed."""
    import importlib

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name, module in list(sys.modules.items()):  # the next test's plugin of the same name is another
        if str(getattr(module, "__file__", "") or "").startswith(str(root)):
            del sys.modules[name]
    importlib.invalidate_caches()


def test_an_installed_plugin_registers_names_attributed_to_it(site):
    install_fake(site, "tiny-models", "tiny", "tiny_plugin", GOOD.format(module="tiny_plugin"), "2.1")
    reg = registry.load(environ={})
    assert reg.problems == []
    entry = reg.entry("model", "tiny-lazy")
    assert (entry.plugin, entry.distribution, entry.version) == ("tiny", "tiny-models", "2.1")
    assert entry.description == "the same, imported on use"
    assert reg.entry("model", "tiny").description == "A tiny linear model."
    assert reg.plugins["tiny"].registered == {"model": ["tiny", "tiny-lazy"]}
    assert reg.plugins["tiny"].hooks == ["register_models"]
    assert isinstance(reg.create("model", "tiny-lazy", width=3), torch.nn.Module)


def test_autoload_off_allow_list_and_blocking(site):
    install_fake(site, "tiny-models", "tiny", "tiny_plugin", GOOD.format(module="tiny_plugin"))
    install_fake(site, "other-models", "other", "other_plugin", GOOD.replace('"tiny', '"other'))
    assert {"tiny", "other"} <= set(registry.load(environ={}).plugins)
    assert "tiny" in registry.load(environ={}).names("model")

    off = registry.load(environ=NO_AUTOLOAD)
    assert off.plugins["tiny"].status == "not loaded" and "tiny" not in off.names("model")
    assert off.names("model") == [
        "cnn",
        "mlp",
        "rnn",
        "rnn-tagger",
        "text-gru",
        "unet",
    ]  # built-ins still load
    explicit = registry.load(["tiny"], environ=NO_AUTOLOAD)  # -p NAME loads it anyway
    assert "tiny" in explicit.names("model") and "other" not in explicit.names("model")

    allowed = registry.load(environ={"XT_PLUGINS": "other-models"})  # by distribution name
    assert "other" in allowed.names("model") and "tiny" not in allowed.names("model")
    assert registry.load(environ={"XT_PLUGINS": ""}).plugins["tiny"].status == "not loaded"
    typo = registry.load(environ={"XT_PLUGINS": "tiny,tinny"})
    assert typo.problems == ["XT_PLUGINS names 'tinny', which is not an installed plugin; see `xt plugins`"]

    blocked = registry.load(["no:tiny"], environ={})
    assert blocked.plugins["tiny"].status == "blocked" and "tiny" not in blocked.names("model")
    no_builtin = registry.load(["no:xt_training.builtins.models"], environ={})
    assert no_builtin.names("model") == [
        "other",
        "other-lazy",
        "rnn-tagger",
        "text-gru",
        "tiny",
        "tiny-lazy",
        "unet",  # the shapes module's stay
    ]


def test_a_broken_plugin_is_reported_by_name_and_distribution_and_the_others_load(site):
    install_fake(site, "broken-dist", "broken", "broken_plugin", "import not_a_module_anywhere\n", "0.3")
    install_fake(site, "tiny-models", "tiny", "tiny_plugin", GOOD.format(module="tiny_plugin"))
    reg = registry.load(environ={})
    assert reg.problems == [  # with the plugin's file and line
        "plugin 'broken' (broken-dist 0.3) failed to load: "
        "ModuleNotFoundError: No module named 'not_a_module_anywhere' (broken_plugin.py:1)"
    ]
    assert reg.plugins["broken"].status == "broken"
    assert "tiny" in reg.names("model") and "cnn" in reg.names("model")
    with pytest.warns(registry.PluginWarning, match="'broken' \\(broken-dist 0.3\\) failed to load"):
        registry.reset()
        registry.names("model")
    with pytest.raises(
        ConfigError, match=r"^-p broken: plugin 'broken' \(broken-dist 0.3\) is broken: ModuleNotF"
    ):
        registry.load(["broken"], environ={})


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_model(register):\n    pass\n",
            "'register_model' is not an xt_training hook; did you mean 'register_models'?",
        ),
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_models(reg):\n    pass\n",
            "PluginValidationError: Plugin 'bad' for hook 'register_models'; hookimpl definition: "
            "register_models(reg); Argument(s) {'reg'} are declared in the hookimpl but can not be found in "
            "the hookspec",  # pluggy's whole reason, not its first line
        ),
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_metrics(register):\n"
            "    register('ok', 'm:x')\n    raise RuntimeError('disk on fire')\n",
            "RuntimeError: disk on fire",
        ),
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_metrics(register):\n"
            "    register('bad name', 'm:x')\n",
            "invalid metric name 'bad name'",
        ),
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_metrics(register):\n"
            "    register('twice', 'm:x')\n    register('twice', 'm:y')\n",
            "metric 'twice' is registered twice by plugin 'bad'",
        ),
        (
            "from xt_training.hookspecs import hookimpl\n@hookimpl\ndef register_losses(register):\n"
            "    register('l', 42)\n",
            "must be a callable or a 'module:attr' string, not 42",
        ),
    ],
    ids=["misspelled-hook", "wrong-argument", "raises", "bad-name", "twice", "bad-factory"],
)
def test_plugin_mistakes_fail_that_plugin_loudly(site, source, error):
    install_fake(site, "bad-dist", "bad", "bad_plugin", source)
    reg = registry.load(environ={})
    assert reg.plugins["bad"].status == "broken"
    assert error in reg.plugins["bad"].error
    assert reg.problems == [f"plugin 'bad' (bad-dist 1.0) failed to load: {reg.plugins['bad'].error}"]
    assert "ok" not in reg.names("metric")  # nothing of a failed plugin is registered
    assert "accuracy" in reg.names("metric")


def test_a_duplicate_name_is_an_error_only_where_it_is_used(site):
    source = """
        from xt_training.hookspecs import hookimpl
        @hookimpl
        def register_models(register):
            register("cnn", "somewhere:cnn", description="another cnn")
            register("own", "somewhere:own")
    """
    install_fake(site, "dup-dist", "dup", "dup_plugin", source, "0.9")
    reg = registry.load(environ={})
    message = (
        "model 'cnn' is registered by 2 plugins, 'xt_training.builtins.models' (xt-training "
        f"{reg.plugins['xt_training.builtins.models'].version}) and 'dup' (dup-dist 0.9); pick one by its "
        "plugin (`--model xt-training:cnn` or `--model dup-dist:cnn`), or block one with `xt -p no:dup`"
    )
    assert reg.conflicts() == [message]
    with pytest.raises(ConfigError) as e:
        reg.entry("model", "cnn")
    assert str(e.value) == message
    assert "cnn" in reg.names("model") and reg.entry("model", "own").plugin == "dup"  # the rest works
    assert reg.entry("model", "xt-training:cnn").plugin == "xt_training.builtins.models"
    assert reg.entry("model", "dup:cnn").description == "another cnn"  # the entry-point name picks it too
    with pytest.raises(ConfigError, match="no plugin 'other' registers model 'cnn'"):
        reg.entry("model", "other:cnn")
    assert registry.load(["no:dup"], environ={}).entry("model", "cnn").plugin == "xt_training.builtins.models"


def test_a_plugin_module_on_sys_path_loads_with_p(site):
    (site / "local_plugin.py").write_text(textwrap.dedent(GOOD.format(module="local_plugin")))
    reg = registry.load(["local_plugin"], environ=NO_AUTOLOAD)
    assert (
        reg.entry("model", "tiny").plugin == "local_plugin"
        and reg.entry("model", "tiny").distribution is None
    )
    with pytest.raises(ConfigError, match="^-p nowhere_at_all: no installed plugin or importable module"):
        registry.load(["nowhere_at_all"], environ={})


def test_every_hook_is_documented_and_has_a_register_kind():
    from xt_training import hookspecs

    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert sorted(hooks) == sorted([f"register_{p}" for p in registry.KINDS.values()] + ["register_commands"])
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert doc and ":param" in doc, name


def test_listing_imports_neither_torch_nor_torchmetrics():
    code = (
        "import sys\nfrom xt_training import registry\n"
        "for kind in registry.KINDS: registry.entries(kind)\n"
        "print(sorted(m for m in ('torch', 'torchmetrics', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_path_option_fits_either_annotation(site):
    """The run directory xt passes a logger (a Path) fits `save_dir: str`, and a str from the command line
    fits `save_dir: Path`: each as its factory annotates it."""
    source = """
        from pathlib import Path
        from xt_training.hookspecs import hookimpl

        def as_str(*, save_dir: str):
            return save_dir

        def as_path(*, save_dir: Path | None = None):
            return save_dir

        @hookimpl
        def register_loggers(register):
            register("as-str", as_str)
            register("as-path", as_path)
    """
    (site / "paths_plugin.py").write_text(textwrap.dedent(source))
    reg = registry.load(["paths_plugin"], environ=NO_AUTOLOAD)
    assert reg.create("logger", "as-str", save_dir=Path("runs/a")) == "runs/a"
    assert reg.create("logger", "as-path", save_dir="runs/a") == Path("runs/a")
    with pytest.raises(ConfigError, match="option save_dir=3 must be str"):
        reg.create("logger", "as-str", save_dir=3)
