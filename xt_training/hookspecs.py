"""The plugin contract: every hook an xt-training plugin can implement.

A plugin is a module (or any object) with functions marked ``@xt_training.hookimpl`` and named like the
hooks below. Installed plugins declare the entry-point group ``xt_training`` in their ``pyproject.toml``::

    [project.entry-points.xt_training]
    myplugin = "my_package.plugin"

and implement only the hooks they need::

    from xt_training import hookimpl

    @hookimpl
    def register_models(register):
        register("tiny-net", "my_package.models:tiny_net", description="a two-layer MLP")

The built-in models, data sets, metrics, ... are registered through exactly these hooks
(:mod:`xt_training.builtins`), so what works for them works for any plugin.

**The register callable.** Every ``register_*`` hook receives ``register(name, factory, *,
description=None, **metadata)``:

- ``name``: how users pick it (``xt run --model NAME``, ``create_model(NAME)``); names are unique per
  kind across all plugins: a second plugin registering the same name is an error naming both.
- ``factory``: a callable that takes keyword options and returns the object, or a ``"module:attr"``
  string naming one. Prefer the string: the module is imported only when the name is used, so
  ``xt list`` and ``xt --help`` stay fast (importing torch alone takes over a second).
- ``description``: one line for ``xt list``; default: the first line of the factory's docstring
  (which needs the import the string form avoids, so give one with a string factory).
- ``metadata``: extra facts shown by ``xt info``; ``register_metrics`` reads ``higher_is_better``,
  ``register_schedulers`` reads ``interval``, ``register_losses`` reads
  ``predicts`` (what a model trained with the loss outputs: ``'logits'``, ``'log-probabilities'``,
  ``'binary-logits'`` or ``'binary-probabilities'``; ``xt predict`` turns it into classes and probabilities);
  every kind reads ``imports``, the names of the options whose values are ``"module:attr"`` paths the factory
  imports (metric ``mean``'s ``fn``): a run directory's ``config.json`` may set them to other modules than
  those of installed plugins only when trusted (``--trust``).
  ``argument``: the option that ``NAME:VALUE`` sets, a short form for the name of a thing the factory
  loads (xt-hf registers ``hf`` with ``argument='name'``: ``--model hf:bert-base-uncased`` is ``--model hf
  --model-opt name=bert-base-uncased``).

Option names are the factory's keyword parameters; their annotations are checked, so a wrong option
name or type gives a one-line error listing what the factory accepts. Where the CLI knows a value a
factory may need (the number of classes from the data, the optimizer for a scheduler, the run
directory for a logger), it passes it if and only if the factory has a parameter of that name: the
names are listed in each hook's docstring.

Loading: plugins load from entry points unless ``XT_DISABLE_PLUGIN_AUTOLOAD=1``; ``XT_PLUGINS=a,b``
loads only those; ``xt -p no:NAME`` blocks one, ``xt -p NAME`` loads one by entry-point or module name.
A plugin that fails to import or to register is reported (``xt plugins``) and the others still load;
a hook name that is not in this file is such a failure.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("xt_training")
hookimpl = pluggy.HookimplMarker("xt_training")


@hookspec
def register_models(register: Any) -> None:
    """Register model factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A model factory takes keyword options and returns an ``nn.Module``. The CLI passes, when the factory
    has a parameter of that name, the values of the data set's ``info`` (:class:`xt_training.registry.Data`),
    e.g. ``num_classes``, ``in_features``, ``in_channels``, ``image_size``, ``input_size``; user options
    (``--model-opt k=v``) take precedence. ``from_checkpoint`` is True when the model is built to load a
    run's checkpoint into (``xt test``, ``xt predict``, ``xt export``, ``load_model``): a pretrained model
    can skip loading (and downloading) its pretrained weights. Called once per registry load, in plugin
    registration order.

    A pretrained model that expects its inputs prepared its own way declares it as metadata,
    ``register(name, factory, preprocessing=fn)`` (``fn`` or ``"module:attr"``): ``fn(**options)``, called
    with the run's model options, returns None or a dict that the run's data factory receives as its
    option ``preprocessing`` when it has one; for images ``{'resize', 'crop', 'interpolation', 'mean',
    'std'}`` (see :func:`xt_training.builtins.datasets.image_preprocessing`), which the image folders
    apply and record in their ``info``.
    """


@hookspec
def register_data(register: Any) -> None:
    """Register data factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A data factory takes keyword options and returns :class:`xt_training.registry.Data`: the loaders by
    split name (``train``, and ``val``/``test`` when available), the facts a model factory needs
    (``info``) and the suggested loss and metrics. The CLI passes ``batch_size`` (``--batch-size``)
    when the factory accepts it, and ``preprocessing`` when the run's model declares one (see
    :func:`register_models`). Data must be generated or read locally: nothing may be downloaded.
    """


@hookspec
def register_metrics(register: Any) -> None:
    """Register metric factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A metric factory returns an object with ``update(y_pred, y)``, ``compute()`` and ``reset()`` (the
    contract of :mod:`xt_training.metrics`; any ``torchmetrics.Metric`` qualifies). ``update`` receives
    several batches concatenated and must accumulate, preferably on the device of its inputs.
    Its ``higher_is_better`` (True or False) says which way it improves, for a run's ``--monitor``; a
    factory whose objects lack it can declare it as metadata, ``register(..., higher_is_better=False)``.
    Without either, monitoring the metric needs ``--mode``.
    """


@hookspec
def register_loggers(register: Any) -> None:
    """Register logger factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A logger factory returns an object following :class:`xt_training.loggers.Logger` (every method
    optional: ``start_run``, ``start_pass``, ``update_pass``, ``log_metrics``, ``end_pass``,
    ``end_epoch``, ``notice``, ``flush``, ``end_run``, ``close``). The CLI passes ``save_dir`` (the run directory) when the
    factory accepts it; loggers that write files write them there.
    """


@hookspec
def register_losses(register: Any) -> None:
    """Register loss factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A loss factory returns a callable ``loss_fn(y_pred, y) -> scalar tensor`` (any ``nn.Module`` loss).
    """


@hookspec
def register_optimizers(register: Any) -> None:
    """Register optimizer factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    An optimizer factory is called with ``params`` (the model's parameters) and returns a
    ``torch.optim.Optimizer``; the CLI passes ``lr`` (``--lr``) when given. A torch optimizer class
    qualifies as it is.
    """


@hookspec
def register_schedulers(register: Any) -> None:
    """Register learning-rate scheduler factories: ``register(name, factory, description=..., interval=...)``.

    :param register: the register callable described in the module docstring.

    A scheduler factory is called with ``optimizer`` and returns a scheduler with ``step()`` (and
    ``state_dict()`` to be checkpointed). The CLI also passes ``epochs`` and ``steps_per_epoch`` when
    the factory accepts them. ``interval='batch'`` (metadata) makes the CLI step it after every optimizer
    step; the default, ``'epoch'``, steps it after every epoch (``ReduceLROnPlateau`` with the monitored
    value).
    """


@hookspec
def register_callbacks(register: Any) -> None:
    """Register callback factories: ``register(name, factory, description=...)``.

    :param register: the register callable described in the module docstring.

    A callback factory takes keyword options and returns a callback object for the training loop.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``xt`` command line.

    :param cli: the ``click.Group`` of the ``xt`` command; add commands with ``@cli.command()`` or
        ``cli.add_command(cmd)``.

    Called once per ``xt`` invocation, before the command line is parsed. Keep the plugin module free of
    heavy imports (torch, ...) at module level: import inside the command's function instead.
    """


@hookspec
def export_formats() -> dict[str, str]:
    """Add formats of the plugin's own to ``xt export RUN --format NAME``, beside onnx, pt2 and torchscript.

    :return: ``{name: "module:function"}``. The function is imported only when its format is asked for, and
        called as ``function(run_dir, output, checkpoint=..., trust=...)``: the run directory (a
        ``pathlib.Path``), the ``-o`` path or ``None`` for the plugin's default, ``'best'``, ``'last'`` or a
        checkpoint file, and whether the run directory is trusted (pass it on to ``load_model``). It writes the
        export and returns its path. xt-hf's ``hf`` writes ``save_pretrained`` directories this way.
    """


@hookspec(firstresult=True)
def show_directory(path: Any) -> str | None:
    """Describe a directory of the plugin's own kind for ``xt show PATH`` (e.g. a study of ``xt tune``).

    :param path: the directory given to ``xt show``, a ``pathlib.Path``.
    :return: the text to print, or ``None`` when ``path`` is not of the plugin's kind.

    Called by ``xt show`` before it reads ``path`` as a run directory: the first plugin that returns text
    wins; when all return ``None``, ``xt show`` shows a run. Recognise your directories by a file you
    write into them and return ``None`` at once for any other (this is called for every ``xt show``);
    raise :class:`xt_training.errors.ConfigError` for a directory of your kind that cannot be shown.
    """


@hookspec(firstresult=True)
def plot_directory(path: Any, out: Any) -> list[Any] | None:
    """Draw a directory of the plugin's own kind for ``xt plot PATH`` (e.g. a study of ``xt tune``).

    :param path: the directory given to ``xt plot``, a ``pathlib.Path``.
    :param out: the ``-o`` path (a ``pathlib.Path``), or ``None`` for the plugin's default file names.
        A plugin that draws several files derives their names from it.
    :return: the paths of the files written, or ``None`` when ``path`` is not of the plugin's kind.

    Called by ``xt plot`` before it reads ``path`` as a run directory, like :func:`show_directory`.
    """
