"""Runs as a whole: train a configuration, and test, predict with, export or reload any run directory.

The run-level API under the ``xt`` commands: :func:`train` (``xt run``), :func:`train_config_file`
(``xt train CONFIG.py``), :func:`test` (``xt test``), :func:`predict_run` (``xt predict``),
:func:`export_run` (``xt export``) and :func:`load_model`. Each takes a run directory of any entry point
(:mod:`xt_training.rundir`): a run built by names is rebuilt from its ``config.json``, a run of
``F.train`` from its ``run.json`` (the model's class and constructor arguments) or the model passed in.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import runpy
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed, registry, slurm
from .building import (
    Built,
    build,
    data_context,
    make,
    scheduler_context,
    seed_everything,
    spread_over_epochs,
    test_loaders,
)
from .checkpoint import load_checkpoint, read_checkpoint
from .config import (
    CONFIG_FILE,
    DATA_INFO_KEYS,
    REQUIRED_IN_CONFIG_FILE,
    RESUME_MAY_CHANGE,
    TRAIN_ARGS,
    checked_run,
    differences,
    identity,
    read_config,
)
from .errors import CheckpointError, ConfigError, first_line
from .exporting import (
    FORMATS,
    SUFFIXES,
    ExportResult,
    OneImage,
    check_format,
    export,
    first_input,
    writable_output,
)
from .files import write_json
from .lr_find import LRFindResult, check_range
from .predict import predict, predict_forward
from .preprocessing import normalization_of
from .rundir import (
    CHECKPOINTS,
    CONFIG_PY,
    RUN_FILE,
    absolute_paths,
    check_run_dir,
    checkpoint_file,
    default_save_dir,
    hold,
    holds_run,
    is_run_dir,
    read_run,
    untrusted,
)
from .runner import resolve_device
from .text import TextCollate, TextDataset, text_forward
from .training import refuse_held_run
from .utils import functional as F

#: how ``xt run`` and :func:`train` say to go on when ``--save-dir`` holds a run (``{dir}``: that directory)
HELD_RUN_FIX = "continue it with `xt run --resume {dir}`, choose another --save-dir, or pass --overwrite"


def _check_resume(run_dir: Path, config: Mapping[str, Any], built: Built) -> None:
    """Refuse to continue the run saved in ``run_dir`` with a configuration that makes it another run."""
    if not (run_dir / CONFIG_FILE).is_file():  # nothing was saved: the resume starts from scratch
        return
    then = read_config(run_dir, trust=True)  # only compared: nothing is built from it
    differ = differences(identity(then), identity(built.config))
    if differ:
        raise ConfigError(
            f"cannot resume from '{run_dir}': the configuration differs from the run's ({'; '.join(differ)}); "
            f"a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}: drop the other changes, or start "
            f"a new run from it with `xt run --config {run_dir} ... --save-dir NEW_DIR`"
        )
    scheduler = config["scheduler"]
    if scheduler is not None and then["epochs"] != config["epochs"]:
        context = scheduler_context(config, built.data, None, built.metrics)
        if spread_over_epochs(scheduler, context, then["epochs"]):
            raise ConfigError(
                f"cannot resume from '{run_dir}' with {config['epochs']} epochs: scheduler "
                f"'{scheduler['name']}' spreads its schedule over the run's {then['epochs']} epochs; resume "
                f"with --epochs {then['epochs']}, or start a new run with `xt run --config {run_dir} --epochs "
                f"{config['epochs']} --save-dir NEW_DIR`"
            )


def train(
    config: Mapping[str, Any],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    max_batches: int | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Build the run ``config`` describes, save its configuration and train it; return the run directory and history.

    The default ``save_dir`` is ``runs/<model>-<data>-<time>``; one that already holds a run is refused
    (with ``overwrite``, its run is deleted first).
    With ``resume``, ``save_dir`` is a run directory to continue from its ``checkpoints/last.pt``
    (``F.train(..., resume=True)``); a configuration that differs from its ``config.json`` in more than
    :data:`RESUME_MAY_CHANGE` is refused. ``max_batches`` ends every pass after that many batches
    (:func:`dry_run`).
    """
    config = checked_run(config)
    distributed.init_from_env()  # under torchrun: every rank runs this; rank 0 writes
    main = distributed.is_main()
    save_dir = Path(save_dir or _default_dir(config["model"]["name"], config["data"]["name"]))
    resume = resume or slurm.restarted()  # a requeued SLURM job goes on where it stopped
    with hold(save_dir, lock=main):  # made now; if nothing is written into it, it goes again
        if resume and not distributed.from_rank_0(holds_run(save_dir)):
            resume = False  # it never completed a step: nothing to resume (refuse_held_run says so)
        refuse_held_run(save_dir, overwrite, HELD_RUN_FIX, resume)
        built = build(config, save_dir)
        if resume:
            _check_resume(save_dir, config, built)
        if not (resume or quiet) and main:  # what the data inferred (a CSV label's task), once per run
            for note in built.data.notes:
                print(note, flush=True)
        created = config.get("created") if resume else None
        saved = {**built.config, "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if not resume and main:  # written first, so that a crashed run still says what it was
            write_json(save_dir / CONFIG_FILE, saved)
            if built.data.tokenizer is not None:  # xt predict reads raw text with it
                built.data.tokenizer.save_pretrained(str(save_dir))
        loaders = built.data.loaders
        if max_batches is not None:
            loaders = {split: _FirstBatches(loader, max_batches) for split, loader in loaders.items()}
        train_args = {key: config[key] for key in TRAIN_ARGS}
        train_args["monitor"] = train_args["monitor"] or built.data.monitor
        history = F.train(
            save_dir,
            loaders["train"],
            built.model,
            built.optimizer,
            config["epochs"],
            built.loss_fn,
            val_loader=loaders.get("val"),
            test_loaders=test_loaders(replace(built.data, loaders=loaders)),
            scheduler=built.scheduler,
            eval_metrics=built.metrics,
            scheduler_step=built.scheduler_step,
            loggers=built.loggers,
            callbacks=built.callbacks,
            forward_fn=built.data.forward_fn,
            resume=resume,
            quiet=quiet,
            **train_args,
        )
        if resume and main:  # only once F.train accepted the configuration as the same run, possibly extended
            write_json(save_dir / CONFIG_FILE, saved)
    return save_dir, history


def _default_dir(*parts: str) -> Path:
    """``runs/<parts>-<time>``, named by rank 0's clock for all ranks; in a SLURM job ``runs/<parts>-slurm<JOB_ID>``,
    which the requeued job finds again."""
    job = slurm.job_id()
    if job is not None:
        return Path("runs") / "-".join([*parts, f"slurm{job}"])
    return distributed.from_rank_0(default_save_dir(*parts) if distributed.is_main() else None)


def resolved_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` that :func:`train` would write for ``config``: every part built, every option
    resolved (the factories' defaults and what the data tells the model included). Writes nothing."""
    config = checked_run(config)
    with tempfile.TemporaryDirectory(prefix="xt-config-") as directory:  # loggers are built with a save_dir
        return build(config, directory).config


def dry_run(
    config: Mapping[str, Any],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    quiet: bool = False,
    batches: int = 1,
) -> list[dict[str, Any]]:
    """Build everything ``config`` names and train one epoch of ``batches`` batches per pass; return its history.

    A check, before a long run, that every part fits the others (the model the data, the loss the model's
    outputs, the metrics and callbacks the values, the export the model). It trains in a temporary
    directory that is deleted afterwards: nothing is written. A ``save_dir`` that holds a run is refused,
    as the real run would refuse it.
    """
    if save_dir is not None:
        refuse_held_run(Path(save_dir), False, HELD_RUN_FIX)
    config = {**checked_run(config), "epochs": 1}
    with tempfile.TemporaryDirectory(prefix="xt-dry-run-") as directory:
        return train(config, directory, quiet=quiet, max_batches=batches)[1]


def lr_find(
    config: Mapping[str, Any],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    quiet: bool = False,
    **options: Any,
) -> tuple[Path, LRFindResult]:
    """Build the model, data, loss and optimizer ``config`` names and run :func:`F.lr_find
    <xt_training.lr_find.lr_find>` on the training split (``xt lr-find``); the directory of its files, and its result.

    ``options`` are F.lr_find's (``min_lr``, ``max_lr``, ``num_steps``...); the device, precision and
    gradient clipping are the configuration's. Its scheduler, metrics, loggers, callbacks and epochs play
    no part. The default ``save_dir`` is ``runs/lr-find-<model>-<data>-<time>``.
    """
    config = checked_run(config)
    check_range(**{k: options[k] for k in ("min_lr", "max_lr", "num_steps") if k in options})
    if config["accumulate_grad_batches"] != 1:  # the rate of a step of N batches: not this test's steps
        raise ConfigError(
            "the range test steps the optimizer after every batch; drop --accumulate-grad-batches, or test "
            "with a batch size N times larger (--batch-size)"
        )
    if save_dir is None:
        save_dir = default_save_dir("lr-find", config["model"]["name"], config["data"]["name"])
    built = build({**config, "scheduler": None, "metrics": {}, "loggers": [], "callbacks": []})
    result = F.lr_find(
        built.data.loaders["train"], built.model, built.optimizer, built.loss_fn, config["device"],
        forward_fn=built.data.forward_fn, precision=config["precision"], clip_grad_norm=config["clip_grad_norm"],
        clip_grad_value=config["clip_grad_value"], save_dir=save_dir, quiet=quiet, **options,
    )  # fmt: skip
    return Path(save_dir), result


class _FirstBatches:
    """The first ``n`` batches of a loader. Its data set and batch size show through, for what reads them
    (``run.json``'s input shape, the normalisation for export)."""

    def __init__(self, loader: Any, n: int):
        self.loader, self.n = loader, n
        self.dataset = getattr(loader, "dataset", None)
        self.batch_size = getattr(loader, "batch_size", None)

    def __iter__(self) -> Any:
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return min(self.n, len(self.loader)) if hasattr(self.loader, "__len__") else self.n


def test(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] = "best",
    splits: list[str] | None = None,
    data: str | None = None,
    data_options: Mapping[str, Any] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
    trust: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate the model of any run directory on test data; ``xt test RUN``.

    A run built by names is rebuilt from its ``config.json`` and tested on its data's test splits (or
    ``splits``, or the data named by ``data``); a run of ``xt train CONFIG.py`` on its config file's
    ``test_loaders``; a run of ``F.train`` on ``data`` (a registered data set: its data is not recorded).
    Loads ``checkpoint`` (``'best'``, ``'last'`` or a file); writes ``test_results.json`` and ``results.pt``
    into ``save_dir`` (default: the run directory). ``trust``: the run directory may run its ``config.py`` and
    import what its files name (:func:`xt_training.rundir.untrusted`).
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, "pass a run directory, or a Python config file")
    out = run_dir if save_dir is None else save_dir
    if data is None and not (run_dir / CONFIG_FILE).is_file() and (run_dir / CONFIG_PY).is_file():
        if not trust:
            raise untrusted(f"testing '{run_dir}' runs its {CONFIG_PY}, which is Python code")
        ckpt = checkpoint_file(run_dir, checkpoint)
        return test_config_file(
            run_dir / CONFIG_PY, checkpoint=ckpt, save_dir=out, device=device, quiet=quiet
        )
    if (run_dir / CONFIG_FILE).is_file():
        config = read_config(run_dir, trust=trust)
        if data is not None:  # other data: the run's own options are kept when it is the run's data set
            options = dict(config["data"]["options"]) if config["data"]["name"] == data else {}
            config["data"] = {"name": data, "options": {**options, **(data_options or {})}}
        built = build(config, train=False)
        model, data_set, loss_fn, metrics = built.model, built.data, built.loss_fn, built.metrics
        device = device if device is not None else config["device"]
    elif data is not None:  # a run of F.train: its model from run.json, the data's own loss and metrics
        model = load_model(run_dir, checkpoint, trust=trust)
        data_set, _ = make("data", {"name": data, "options": absolute_paths(dict(data_options or {}))})
        loss_fn, _ = make("loss", {"name": data_set.loss or "cross-entropy", "options": {}})
        metrics = {m: make("metric", {"name": m, "options": {}})[0] for m in data_set.metrics}
    else:
        raise ConfigError(
            f"'{run_dir}' is a run of F.train, which records no data; name the test data: "
            f"`xt test {run_dir} --data NAME` (`xt list data`), or call F.test(..., checkpoint_path='{run_dir}')"
        )
    loaders = test_loaders(data_set, splits)
    if not loaders:
        raise ConfigError(
            f"the data of '{run_dir}' has no test split; pick one with --split ({', '.join(data_set.loaders)})"
        )
    ckpt = checkpoint_file(run_dir, checkpoint)  # after the cheaper checks of the data's splits
    return F.test(
        loaders,
        model,
        loss_fn,
        eval_metrics=metrics,
        forward_fn=data_set.forward_fn,
        save_dir=out,
        checkpoint_path=ckpt,
        device=device,
        quiet=quiet,
    )


def exec_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a Python config file and return its global names. The file is trusted code."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file '{file}' does not exist")
    if file.suffix == ".json":  # JSON's null and true are not Python
        raise ConfigError(
            f"'{file}' is JSON, not a Python config file; for a run's {CONFIG_FILE} use "
            "`xt run --config RUN_DIR`"
        )
    folder = str(file.resolve().parent)
    if folder not in sys.path:  # as `python CONFIG.py` would: modules beside the config file import
        sys.path.insert(0, folder)
    try:
        return runpy.run_path(str(file), run_name="__xt_config__")
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}, line {e.lineno}: {e.msg}; fix the config file") from None


def _require(namespace: Mapping[str, Any], names: tuple[str, ...], path: Any) -> None:
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ConfigError(
            f"config file '{path}' does not define {', '.join(map(repr, missing))}; a config defines "
            f"{', '.join(names)} (`xt template DIR` writes an example)"
        )


def train_config_file(
    path: str | os.PathLike[str],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train what a Python config file defines; a copy of the file is kept in the run directory as ``config.py``.

    Every global name of the file that is an argument of ``F.train`` is passed to it; ``save_dir``
    here wins over a ``save_dir`` in the file, whose default is ``runs/<file name>-<time>``.
    """
    if seed is not None:
        seed_everything(seed)
    namespace = exec_config(path)
    _require(namespace, REQUIRED_IN_CONFIG_FILE, path)
    params = inspect.signature(F.train).parameters
    kwargs = {k: namespace[k] for k in params if k in namespace and k != "save_dir"}
    if quiet:
        kwargs["quiet"] = True
    distributed.init_from_env()  # under torchrun: every rank runs this; rank 0 writes
    save_dir = save_dir or namespace.get("save_dir") or _default_dir(Path(path).stem)
    main = distributed.is_main()
    with hold(save_dir, lock=main):
        fix = "set resume = True in the config file, choose another --save-dir, or pass --overwrite"
        overwrite = kwargs.pop("overwrite", False) or overwrite
        # a config file with resume = True continues its run
        refuse_held_run(Path(save_dir), overwrite, fix, bool(kwargs.get("resume")))
        if main:
            shutil.copyfile(path, Path(save_dir) / CONFIG_PY)
        return Path(save_dir), F.train(save_dir, **kwargs)


def test_config_file(
    path: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate the ``model`` of a Python config file on its ``test_loaders`` with ``F.test``."""
    namespace = exec_config(path)
    _require(namespace, ("model", "test_loaders"), path)
    params = inspect.signature(F.test).parameters
    kwargs = {k: namespace[k] for k in params if k in namespace and k not in ("save_dir", "checkpoint_path")}
    kwargs.update(save_dir=save_dir, checkpoint_path=checkpoint, quiet=quiet or kwargs.get("quiet", False))
    if device is not None:
        kwargs["device"] = device
    return F.test(**kwargs)


def load_model(
    run_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] = "best",
    *,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    trust: bool = False,
) -> nn.Module:
    """The model of any run directory with the weights of ``checkpoint``, in eval mode.

    ``checkpoint``: ``'best'`` (``checkpoints/best.pt``), ``'last'`` or a checkpoint path. The model is
    ``model`` when given; else a run built by names creates it by name with the options it saved (those
    it took from the data included; the model's plugin must be installed), and a run of ``F.train``
    imports the class its ``run.json`` names and calls it with the constructor arguments recorded there:
    only a class of a module imported already or of an installed plugin's package, unless ``trust``.
    """
    run_dir = Path(run_dir)
    path = checkpoint_file(run_dir, checkpoint)
    from_record = model is None and not (run_dir / CONFIG_FILE).is_file()  # rebuilt from run.json
    model = _rebuild_model(run_dir, trust) if model is None else model
    try:
        load_checkpoint(path, model)
    except CheckpointError as e:
        if not from_record:
            raise
        raise CheckpointError(
            f"{first_line(e)} (the model was rebuilt from {RUN_FILE}, whose recorded constructor arguments "
            f"do not fit); pass the model: load_model('{run_dir}', model=...)"
        ) from None
    model.eval()
    return model.to(resolve_device(device)) if device is not None else model


def _rebuild_model(run_dir: Path, trust: bool) -> nn.Module:
    """A fresh model of the run: by name from ``config.json``, else by class from ``run.json``.

    Its weights come from a checkpoint next, so a factory taking ``from_checkpoint`` gets True: a
    pretrained model need not load (nor download) its pretrained weights.
    """
    if (run_dir / CONFIG_FILE).is_file():
        config = read_config(run_dir, trust=trust)
        name, options = config["model"]["name"], config["model"]["options"]
        context = {**(config.get("info") or {}), "from_checkpoint": True}
        return registry.create("model", name, **{**registry.accepts("model", name, context), **options})
    record = read_run(run_dir).get("model")
    if not record:
        raise ConfigError(
            f"'{run_dir}' records no model (no {CONFIG_FILE} or {RUN_FILE}); pass it: load_model(RUN, model=Net(...))"
        )
    module, _, qualname = record["class"].partition(":")
    fix = f"or pass the model: load_model('{run_dir}', model={qualname.rsplit('.', 1)[-1]}(...))"
    if module == "__main__" or "<locals>" in qualname:
        raise ConfigError(
            f"the run's model class {qualname} was defined in the script that trained it, so it cannot be "
            f"imported here; move it into a module, {fix}"
        )
    if not trust and not registry.known_code(record["class"]):
        raise untrusted(
            f"'{run_dir / RUN_FILE}' names the model class {record['class']}, of a module not imported"
        )
    try:
        cls = registry.load_object(record["class"])
    except ConfigError as e:
        raise ConfigError(
            f"cannot import the run's model class {record['class']} ({e}); put its module on PYTHONPATH, {fix}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):  # it is called with the recorded arguments
        raise ConfigError(
            f"'{run_dir / RUN_FILE}' names {record['class']}, which is not a model class; {fix.removeprefix('or ')}"
        )
    if record.get("init") is None:
        missing = ", ".join(record.get("missing") or []) or "its arguments"
        if missing.startswith("*") or ", *" in missing:
            raise ConfigError(
                f"{record['class']} takes {missing}, whose values a run cannot record; {fix.removeprefix('or ')}"
            )
        raise ConfigError(
            f"{record['class']} does not keep {missing} as attributes of the same names (self.x = x), so the "
            f"run could not record how it was constructed; keep them, {fix}"
        )
    try:
        return cls(**record["init"])
    except Exception as e:
        raise ConfigError(f"{record['class']}(**{record['init']}) failed ({first_line(e)}); {fix}") from None


def load_tokenizer(directory: str | os.PathLike[str], *, trust: bool = False) -> Any:
    """The tokenizer saved in ``directory`` by ``save_pretrained``, or None when there is none.

    ``tokenizer_class`` in ``tokenizer_config.json`` names it: ``'module:Class'`` (xt-training's and
    plugins' tokenizers; another module only with ``trust``) is imported and loaded with
    ``Class.from_pretrained(directory)``; any other name is a Hugging Face tokenizer, loaded with
    ``transformers.AutoTokenizer`` (which runs no code of the directory's).
    """
    file = Path(directory) / "tokenizer_config.json"
    if not file.is_file():
        return None
    try:
        name = json.loads(file.read_text()).get("tokenizer_class") or ""
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(
            f"'{file}' is not a tokenizer configuration ({e}); save the tokenizer again"
        ) from None
    if ":" in name:
        if not trust and not registry.known_code(name):
            raise untrusted(f"'{file}' names the tokenizer_class {name!r}, of a module not imported")
        return registry.load_object(name).from_pretrained(directory)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            f"'{file}' is a Hugging Face tokenizer ({name or 'unnamed'}); pip install transformers to load it"
        ) from None
    return AutoTokenizer.from_pretrained(directory)


# --- xt predict ----------------------------------------------------------------------------------------------
def predict_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    inputs: str | os.PathLike[str] | None = None,
    data: str | None = None,
    data_options: Mapping[str, Any] | None = None,
    split: str | None = None,
    checkpoint: str | os.PathLike[str] = "best",
    batch_size: int | None = None,
    device: str | None = None,
    trust: bool = False,
) -> Path:
    """``xt predict``: the predictions of a run directory's model, written to ``out``.

    The inputs are, in this order of precedence:

    - ``inputs`` with a tokenizer saved in the run directory: a text file, one raw text per line,
      tokenized with that tokenizer and fed as ``model(**tokenizer(texts))``;
    - ``inputs`` otherwise: unlabelled inputs the data set reads with its ``predict_path`` option (a CSV
      file without the label column, a folder of images), the split ``predict``;
    - else the split ``split`` (default ``'test'``) of the run's data, or of ``data`` with ``data_options``
      (the run's own data options are kept when ``data`` is the run's data set). A run of ``F.train`` or
      ``xt train`` records no data by name: it needs ``data``.

    A ``.csv`` gets, for a classifier (cross-entropy or NLL loss), the predicted class and one
    probability column per class; for multi-label models (BCE loss) the labels predicted on and one
    probability column per label; else the outputs. ``.npy`` and ``.pt`` get the model's outputs as they are.
    ``trust``: the run directory may import what its files name (:func:`xt_training.rundir.untrusted`).
    """
    run_dir, out = Path(run_dir), Path(out)
    check_run_dir(run_dir, "pass one")
    if (run_dir / CONFIG_FILE).is_file():
        config = read_config(run_dir, trust=trust)
    elif data is None:
        raise ConfigError(
            f"'{run_dir}' is a run of F.train or `xt train`, which records no data by name; name the data "
            f"to predict on: `xt predict {run_dir} --data NAME [--data-opt KEY=VALUE] -o OUT`"
        )
    else:
        config = {"data": {"name": data, "options": {}}, "info": {}, "loss": None, "device": None}
    model = load_model(run_dir, checkpoint, trust=trust)
    trained_on = config.get("info") or {}
    tokenizer = load_tokenizer(run_dir, trust=trust) if inputs is not None and data is None else None
    if tokenizer is not None:
        texts = TextDataset(_lines(inputs))
        loader: Any = DataLoader(texts, batch_size or 64, collate_fn=TextCollate(tokenizer))
        forward: Any = text_forward
    else:
        name = data or config["data"]["name"]
        options = dict(config["data"]["options"]) if name == config["data"]["name"] else {}
        options.update(absolute_paths(dict(data_options or {})))
        if batch_size is not None:
            options["batch_size"] = batch_size
        if inputs is not None:
            if "predict_path" not in registry.current().entry("data", name).parameters():
                raise ConfigError(
                    f"data '{name}' cannot read unlabelled inputs (it has no predict_path option); "
                    "predict one of its splits with --split, or name a data set that reads them with --data"
                )
            options["predict_path"] = str(inputs)
        # the preprocessing the model asks for (a pretrained model's), as when the run trained
        built = registry.create_data(
            name, **{**registry.accepts("data", name, data_context(config)), **options}
        )
        split = split or ("predict" if inputs is not None else "test")
        if split not in built.loaders:
            raise ConfigError(f"data '{name}' has no split {split!r}; splits: {', '.join(built.loaders)}")
        for key in (*DATA_INFO_KEYS, "vocab_size"):
            if key in trained_on and key in built.info and built.info[key] != trained_on[key]:
                raise ConfigError(
                    f"data '{name}' gives inputs with {key}={built.info[key]!r}, but the model of '{run_dir}' "
                    f"was trained on {key}={trained_on[key]!r}; predict on inputs of the shape it was trained on"
                )
        for key in ("normalization", "table", "preprocessing"):
            if trained_on.get(key) not in (None, built.info.get(key)):
                # the data recomputed its preprocessing from its training files (or from the model's plugin:
                # a pretrained model's resize and mean), which changed since the run
                raise ConfigError(
                    f"data '{name}' now prepares its inputs otherwise than when '{run_dir}' trained (its {key} "
                    "differs: the training file or the model's plugin changed?); restore them, or predict with "
                    "the exported model"
                )
        loader, forward = built.loaders[split], built.forward_fn or predict_forward
    if out.suffix.lower() == ".csv":
        predicts = _loss_predicts(config["loss"]["name"] if config["loss"] else None, read_run(run_dir))
        forward = _with_columns(forward, predicts, trained_on.get("classes") or built.info.get("classes"))
        dataset = getattr(loader, "dataset", None)
        if getattr(dataset, "ids", None) is not None:  # the CSV data's id column, an image's path
            forward = _with_ids(forward, dataset.id_column, dataset.ids)
    return predict(model, loader, device=device or config["device"], forward_fn=forward, out=out)


def _loss_predicts(name: str | None, record: Mapping[str, Any]) -> str | None:
    """What the run's loss says its model's outputs are (``predicts`` where the loss was registered).

    A run built by names names its loss; a run of ``F.train`` records its loss's class, matched to the
    registered loss made by that class.
    """
    losses = registry.current().table("loss")
    if name is None:
        # matched by class name: the record's torch.nn.modules.loss:X is registered as torch.nn:X
        cls = str(record.get("loss")).rsplit(":", 1)[-1]
        name = next(
            (n for n, e in losses.items() if isinstance(e.factory, str) and e.factory.endswith(f":{cls}")),
            None,
        )
    entry = losses.get(name) if name else None
    return entry.metadata.get("predicts") if entry is not None else None


def _lines(path: str | os.PathLike[str]) -> list[str]:
    """The texts of a text file, one per line, blank lines included (as empty texts).

    Row ``i`` of the predictions is line ``i`` of the file: the CSV holds no input column, so dropping
    blank lines would silently pair every later row with the wrong line.
    """
    try:  # lines as editors and `wc -l` count them (str.splitlines would also split at \f, \x1c, ...)
        with open(path, encoding="utf-8-sig") as f:
            texts = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"'{path}' is not UTF-8 text ({e.reason}); pass a text file, one text per line"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot read '{path}' ({e.strerror or e}); pass a text file, one text per line"
        ) from None
    if not any(texts):
        raise ConfigError(f"text file '{path}' has no text; write one text per line")
    return texts


def _with_columns(
    forward: Callable[[nn.Module, Any], tuple[Any, Any]], predicts: str | None, classes: Any
) -> Any:
    """``forward`` with classifier outputs turned into CSV columns: the prediction and the probabilities.

    ``predicts`` is what the loss declared when it was registered: ``'logits'`` (class scores, softmax),
    ``'log-probabilities'`` (exp), ``'binary-logits'`` (sigmoid per label) or ``'binary-probabilities'``.
    """
    if predicts not in ("logits", "log-probabilities", "binary-logits", "binary-probabilities"):
        return forward

    def columns(model: nn.Module, batch: Any) -> tuple[Any, Any]:
        y_pred, y = forward(model, batch)
        if not isinstance(y_pred, torch.Tensor) or y_pred.ndim > 2:
            return y_pred, y  # e.g. segmentation masks: the CSV writer says to use .npy or .pt
        scores = y_pred.reshape(len(y_pred), -1).float()
        names = list(classes) if classes and len(classes) == scores.shape[1] else range(scores.shape[1])
        if predicts in ("logits", "log-probabilities"):
            probabilities = scores.exp() if predicts == "log-probabilities" else scores.softmax(1)
            predicted = [names[i] for i in probabilities.argmax(1).tolist()]
        else:
            probabilities = scores if predicts == "binary-probabilities" else scores.sigmoid()
            on = (probabilities >= 0.5).tolist()
            if scores.shape[1] == 1:  # binary: one probability, of the positive class
                binary = list(classes) if classes and len(classes) == 2 else [0, 1]
                predicted, names = [binary[row[0]] for row in on], [binary[1]]
            else:
                predicted = [";".join(str(names[j]) for j, o in enumerate(row) if o) for row in on]
        return {"prediction": predicted, **{f"p_{n}": probabilities[:, j] for j, n in enumerate(names)}}, y

    return columns


def _with_ids(forward: Callable[[nn.Module, Any], tuple[Any, Any]], name: str, ids: Sequence[Any]) -> Any:
    """``forward`` with a first CSV column ``name``: the ids of the batch's examples, taken from ``ids`` in order.

    The predictions come in the loader's order, one batch after another, so a running count lines them up.
    """
    done = 0

    def with_ids(model: nn.Module, batch: Any) -> tuple[Any, Any]:
        nonlocal done
        y_pred, y = forward(model, batch)
        columns = dict(y_pred) if isinstance(y_pred, Mapping) else {"output": y_pred}
        n = len(next(iter(columns.values())))
        done += n
        return {name: list(ids[done - n : done]), **columns}, y

    return with_ids


# --- xt export ----------------------------------------------------------------------------------------------
def export_run(
    source: str | os.PathLike[str],
    *,
    format: str = "onnx",
    output: str | os.PathLike[str] | None = None,
    checkpoint: str | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    input_shape: Sequence[int] | None = None,
    model: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    verify: bool = True,
    trust: bool = False,
) -> ExportResult | Path:
    """Export the model of any run directory, or of a checkpoint file, with :func:`~xt_training.exporting.export`.

    ``source`` is a run directory (its model from :func:`load_model`, weights from ``checkpoint``:
    ``'best'`` (default), ``'last'`` or a checkpoint file) or a checkpoint file; one outside a run
    directory needs ``model`` (a registered name) and ``model_options``. The example input is one batch
    of the run's data, or random values of the input shape the run recorded, or of ``input_shape``.
    The data's preprocessing (its normalisation) goes into the exported graph, which then takes raw
    inputs. The default output is ``RUN_DIR/model.onnx`` (``model-last.onnx`` for the last checkpoint),
    or the checkpoint's path with the format's suffix. ``trust``: the run directory may import what its
    files name (:func:`xt_training.rundir.untrusted`). A format a plugin adds
    (:func:`~xt_training.hookspecs.export_formats`) is that plugin's: it returns the path it wrote.
    """
    if format not in FORMATS:  # a plugin's format (xt-hf's hf), which exports a run directory its own way
        plugin_formats = registry.current().export_formats()
        if format not in plugin_formats:
            raise ConfigError(
                f"unknown export format {format!r}; choose one of: {', '.join([*FORMATS, *plugin_formats])}"
            )
        if not Path(source).is_dir():
            raise ConfigError(f"--format {format} exports a run directory; '{source}' is not one")
        export_fn = registry.load_object(plugin_formats[format])
        return export_fn(Path(source), output, checkpoint=checkpoint or "best", trust=trust)
    check_format(format, verify)
    source = Path(source)
    run_dir: Path | None = None
    if source.is_dir() or source.name == CONFIG_FILE:
        run_dir = source if source.is_dir() else source.parent
        check_run_dir(run_dir, "pass one, or a checkpoint file with --model NAME and --input-shape")
        ckpt = checkpoint_file(run_dir, checkpoint or "best")
        default = run_dir / (("model" if ckpt.stem == "best" else f"model-{ckpt.stem}") + SUFFIXES[format])
    elif source.is_file():
        if checkpoint is not None:
            raise ConfigError(
                f"--checkpoint picks a checkpoint of a run directory; '{source}' is a checkpoint itself"
            )
        ckpt, default = source, source.with_name(source.stem + SUFFIXES[format])
        if source.parent.name == CHECKPOINTS and is_run_dir(source.parent.parent):
            run_dir = source.parent.parent
    else:
        raise ConfigError(f"'{source}' does not exist; pass a run directory or a checkpoint file")
    if run_dir is not None and (model is not None or model_options):
        # the run records its model with the options it was trained with (some taken from the data):
        # naming it again is harmless, naming another one cannot fit the run's checkpoints
        config = read_config(run_dir, trust=trust) if (run_dir / CONFIG_FILE).is_file() else None
        named = config["model"]["name"] if config else None
        if model != named or model_options:
            raise ConfigError(
                f"'{run_dir}' is a run directory: it records its model ({named or read_run(run_dir).get('model', {}).get('class')}) "
                "and its options, so drop --model and --model-opt"
            )
    output = writable_output(output if output is not None else default)

    x = None
    if input_shape is not None:
        x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    if run_dir is not None:
        trained = (read_run(run_dir).get("input") or {}).get("shape")
        if input_shape is not None and trained and list(input_shape[1:]) != trained:
            raise ConfigError(
                f"--input-shape {','.join(map(str, input_shape))} is not the shape the run was trained on "
                f"(N, {', '.join(map(str, trained))}); give --input-shape 1,{','.join(map(str, trained))} "
                "or leave it out"
            )
        net = load_model(run_dir, ckpt, trust=trust)
        meta, x, normalization = _run_export_facts(run_dir, x, trust)
        epoch = read_checkpoint(ckpt).get("epoch")
    else:
        if model is None or input_shape is None:
            raise ConfigError(
                f"'{source}' is not inside a run directory (no run files beside its checkpoints/ folder); "
                "name its model and input: --model NAME [--model-opt KEY=VALUE] --input-shape 1,3,32,32"
            )
        options = {**registry.accepts("model", model, {"from_checkpoint": True}), **dict(model_options or {})}
        net = registry.create("model", model, **options)
        meta, normalization = {"model": model, "model_options": dict(model_options or {})}, None
        epoch = load_checkpoint(ckpt, net).get("epoch")
    meta["checkpoint"] = ckpt.name
    if isinstance(epoch, int):
        meta["epoch"] = epoch
    inputs: dict[str, Any] = {}
    tokenizer = load_tokenizer(run_dir, trust=trust) if run_dir is not None else None
    if tokenizer is not None:  # a text run: its model is called as model(**tokenizer(texts))
        meta.update(
            tokenizer=_tokenizer_files(tokenizer),
            inputs="token ids: the texts through the tokenizer whose files 'tokenizer' holds (padding=True)",
        )
        inputs = {"keyword_inputs": True, "dynamic_length": True}
    elif isinstance(x, list) and x and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in x):
        # torchvision's detection models take a list of images and return one dict per image, whose
        # number of boxes depends on the image: the file takes one image and returns its boxes
        net, x, dynamic_batch = OneImage(net), x[0][None], False
        inputs = {"traced": format == "onnx"}  # torchvision writes them to be traced for ONNX
        meta["inputs"] = (
            "one image (1, C, H, W), float pixels in [0, 1]; outputs: its boxes, labels and scores"
        )
    return export(
        net, x, output, format, dynamic_batch=dynamic_batch, verify=verify, opset=opset, metadata=meta,
        normalization=normalization, **inputs,
    )  # fmt: skip


def _tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The files ``tokenizer.save_pretrained`` writes, by name, so an exported text model carries its tokenizer."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return {f.name: f.read_text() for f in sorted(Path(directory).iterdir()) if f.is_file()}


def _run_export_facts(
    run_dir: Path, x: Any, trust: bool
) -> tuple[dict[str, Any], Any, dict[str, Any] | None]:
    """The metadata, an example input (``x`` when given) and the normalisation of a run's export."""
    record = read_run(run_dir)
    normalization = record.get("normalization")
    if not (run_dir / CONFIG_FILE).is_file():  # F.train's or xt train's run: what run.json recorded
        meta = {"model": record.get("model", {}).get("class")}
        if x is None:
            shape = (record.get("input") or {}).get("shape")
            if not shape:
                raise ConfigError(
                    f"'{run_dir}' records no input shape (its inputs are not one tensor); pass --input-shape"
                )
            dtype = getattr(torch, record["input"].get("dtype", "float32"))
            x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        return meta, x, normalization
    config = read_config(run_dir, trust=trust)
    meta = _config_metadata(config)
    normalization = (config.get("info") or {}).get("normalization") or normalization
    if x is None:  # the data is built only for its example batch (it may be large, or gone)
        name = config["data"]["name"]
        context = registry.accepts("data", name, data_context(config))  # prepared as when the run trained
        data = registry.create("data", name, **{**context, **config["data"]["options"]})
        x = first_input(_example_loader(data.loaders))
        normalization = normalization or normalization_of(data.loaders.values())
    return meta, x, normalization


def _config_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's name and options, the data's name and its class names, from a run's ``config.json``."""
    model, data, info = config["model"], config["data"], config.get("info") or {}
    meta: dict[str, Any] = {
        "model": model["name"],
        "model_options": model.get("resolved", model["options"]),
        "data": data["name"],
    }
    if info.get("classes"):
        meta["classes"] = [str(c) for c in info["classes"]]
    elif isinstance(info.get("num_classes"), int):
        meta["num_classes"] = info["num_classes"]
    if isinstance(info.get("table"), Mapping):  # CSV rows: how a deployer makes the model's input of a row
        meta["table"] = info["table"]
        meta["inputs"] = (
            "one float32 row per example, the columns of table.inputs in that order: a number column's value as "
            "in the file (NaN where it is missing: the model fills it in as table.fill says); NAME=VALUE is 1.0 "
            "where column NAME holds VALUE, else 0.0 (all 0.0 where it is missing); the normalization is "
            "inside the model"
        )
    return meta


def _example_loader(loaders: Mapping[str, Any]) -> Any:
    for split in ("test", "val", "train", *loaders):
        if split in loaders:
            return loaders[split]
    raise ConfigError("the data has no loaders to take an example batch from; pass --input-shape")
