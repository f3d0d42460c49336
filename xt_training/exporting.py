"""Models out of Python: ONNX (checked with ONNX Runtime), torch.export programs (``.pt2``) and TorchScript.

Usage::

    from xt_training.exporting import export

    result = export(model, x, "model.onnx")   # x: one batch, as the loop calls the model: model(x)
    print(result)                              # the file, its size, inputs/outputs with shapes, the difference

Every artifact is loaded back with its own runtime (``onnxruntime.InferenceSession``,
``torch.export.load``, ``torch.jit.load``), run on the example batch and, with a dynamic batch, on a
batch of one, and compared with the eager model: an artifact that does not reproduce the model is an
error and is removed, never a file quietly left behind (the original xt-training exported ONNX after
every epoch and hid the failures). A model the exporter cannot capture is a one-line
:class:`ExportError` with the exporter's own reason and what to try instead.

The artifact carries what is needed to use it (ONNX ``metadata_props``; the extra file
``xt_training.json`` of ``.pt2`` and TorchScript files): the xt-training version and whatever
``metadata`` the caller gives -- for runs of ``xt run``: the model's name and options, the data, the
class names when the data knows them, and the input normalisation when the data applies one.

``xt export RUN_DIR`` (:mod:`xt_training.builtins.export_command`) calls :func:`xt_training.runs.export_run`.
This module is not named ``export``: importing a submodule ``xt_training.export`` binds it as the package
attribute ``xt_training.export`` and would shadow the public function of that name.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree

from ._version import __version__
from .batch import describe, to_device
from .checkpoint import load_checkpoint, unwrap_model
from .errors import ConfigError, XtError, first_line
from .files import check_writable
from .predict import model_expects
from .preprocessing import raw_inputs, with_preprocessing
from .rundir import BEST, checkpoints_dir

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "METADATA_FILE",
    "ExportError",
    "TensorSpec",
    "ExportResult",
    "check_format",
    "export",
    "export_trained",
]

FORMATS = ("onnx", "pt2", "torchscript")
#: default file name endings; torchscript's is not plain ``.pt``, which is a checkpoint's
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: the extra file holding the metadata in ``.pt2`` and TorchScript files
METADATA_FILE = "xt_training.json"
#: (absolute, relative) tolerance of the exported model's outputs, by output dtype
TOLERANCES = {
    "float64": (1e-7, 1e-7),
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 2e-2),
}
_RUNTIMES = {"onnx": "ONNX Runtime", "pt2": "torch.export.load", "torchscript": "torch.jit.load"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(XtError, RuntimeError):
    """The exporter cannot capture the model, or the exported model does not reproduce it."""


@dataclass
class TensorSpec:
    """One input or output of an exported model; ``'batch'`` marks a dynamic batch dimension."""

    name: str
    shape: list[int | str]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype} [{', '.join(map(str, self.shape))}]"


@dataclass
class ExportResult:
    """What :func:`export` wrote and how well it reproduces the eager model.

    ``max_abs_diff`` is the largest absolute difference over all outputs and ``batch_sizes`` (``None``
    when not verified); ``str(result)`` is the report ``xt export`` prints.
    """

    path: Path
    format: str
    size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool
    method: str
    max_abs_diff: float | None = None
    batch_sizes: list[int] = field(default_factory=list)
    opset: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the result."""
        return {**asdict(self), "path": str(self.path)}

    def __str__(self) -> str:
        opset = f", opset {self.opset}" if self.opset is not None else ""
        batch = "dynamic batch" if self.dynamic_batch else "static batch"
        lines = [f"exported {self.format} to {self.path} ({_size(self.size)}{opset}, {batch}; {self.method})"]
        lines += [f"  input  {spec}" for spec in self.inputs]
        lines += [f"  output {spec}" for spec in self.outputs]
        if self.max_abs_diff is None:
            lines.append("  not verified")
        else:
            sizes = " and ".join(map(str, self.batch_sizes))
            lines.append(
                f"  verified with {_RUNTIMES[self.format]} at batch size{'s' * (len(self.batch_sizes) > 1)} {sizes}: "
                f"max abs difference {self.max_abs_diff:.3g}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- checks -------------------------------------------------------------------------------------------------------
def check_format(format: str, verify: bool = True) -> None:
    """Refuse an unknown format, and ONNX without its packages, before any slow work is done."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format != "onnx":
        return
    missing = []
    for package in ONNX_PACKAGES if verify else ONNX_PACKAGES[:2]:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ConfigError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: pip install {' '.join(missing)}"
        )


def writable_output(path: str | os.PathLike[str]) -> Path:
    """The output path, once its directory exists and takes files: fail before exporting, not after."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output '{path}' is a directory; give a file name, e.g. {path / 'model.onnx'}")

    check_writable(path)
    return path


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = {"xt_training_version": __version__, **(metadata or {})}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"metadata {key!r} is a {type(value).__name__}; metadata values must be JSON data "
                "(strings, numbers, lists, dicts)"
            ) from None
        if not isinstance(key, str):
            raise ConfigError(f"metadata keys must be strings, not {key!r}")
    return meta


# --- inputs and outputs as flat lists of named tensors ------------------------------------------------------------
def _leaves(tree: Any, what: str) -> list[torch.Tensor]:

    leaves = _pytree.tree_leaves(tree)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise ConfigError(
            f"{what} is {describe(tree)}; export needs a tensor, or a tuple, list or dict of tensors"
        )
    return leaves


def _names(tree: Any, prefix: str) -> list[str]:
    """``'input'`` for a single tensor, dict keys for dicts, ``'input_0'``... for sequences."""
    paths = [path for path, _ in _pytree.tree_flatten_with_path(tree)[0]]
    if paths == [()]:
        return [prefix]
    names = []
    for path in paths:
        parts = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        first_is_key = hasattr(path[0], "key")
        names.append("_".join(parts) if first_is_key else "_".join([prefix, *parts]))
    return names


def _specs(tree: Any, prefix: str, batch: int | None) -> list[TensorSpec]:
    """Names, shapes and dtypes; with a dynamic ``batch`` a first dimension of that size is ``'batch'``."""
    return [
        TensorSpec(
            name,
            ["batch" if i == 0 and batch is not None and d == batch else d for i, d in enumerate(t.shape)],
            str(t.dtype).removeprefix("torch."),
        )
        for name, t in zip(_names(tree, prefix), _leaves(tree, prefix))
    ]


def _resize(tree: Any, n: int) -> Any:
    """The batch with ``n`` examples: the first ``n``, or the batch repeated until there are ``n``."""

    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        reps = math.ceil(n / t.shape[0])
        return torch.cat([t] * reps)[:n] if reps > 1 else t[:n]

    return _pytree.tree_map(resize, tree)


def _batch_size(leaves: list[torch.Tensor], dynamic: bool) -> int:
    sizes = {t.shape[0] for t in leaves if t.ndim}
    if not sizes:
        raise ConfigError("the example input has no batch dimension: every tensor is a scalar")
    if dynamic and len(sizes) > 1:
        raise ConfigError(
            f"the example input's tensors have different first dimensions {sorted(sizes)}; a dynamic batch "
            "needs the batch first in every input, or export with --static-batch (dynamic_batch=False)"
        )
    return min(sizes)


def _dynamic_dims(x: Any, batch: bool, length: bool) -> list[dict[int, str]]:
    """For each input tensor, its dynamic dimensions by name: ``'batch'`` (dimension 0) and ``'length'``
    (dimension 1 of every input with two or more), each shared by all inputs."""
    return [
        {**({0: "batch"} if batch and t.ndim else {}), **({1: "length"} if length and t.ndim > 1 else {})}
        for t in _leaves(x, "the example input")
    ]


def _dynamic_shapes(x: Any, batch: bool, length: bool) -> tuple[Any, ...] | None:
    """``dynamic_shapes`` for the arguments ``(x,)`` of torch.export (None when nothing is dynamic)."""
    if not (batch or length):
        return None
    dims = {"batch": torch.export.Dim("batch", min=1), "length": torch.export.Dim("length", min=1)}
    spec = _pytree.tree_flatten(x)[1]
    shapes = [
        {d: dims[name] for d, name in named.items()} or None for named in _dynamic_dims(x, batch, length)
    ]
    return (_pytree.tree_unflatten(shapes, spec),)


def _pad_length(tree: Any, extra: int) -> Any:
    """The batch with dimension 1 of every input of two or more dimensions longer by ``extra`` zeros
    (padding, as a tokenizer pads a batch to its longest text)."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 2:
            return t
        return torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)

    return _pytree.tree_map(pad, tree)


# --- models called otherwise than model(x) -------------------------------------------------------------------------
class KeywordInputs(torch.nn.Module):
    """``model(**inputs)`` as a module of one dict argument (text models, see
    :func:`~xt_training.text.text_forward`): exporters pass the example input as one argument, so the
    exported graph's inputs are the dict's keys (``input_ids``, ``attention_mask``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.model(**inputs)


class OneImage(torch.nn.Module):
    """A model of a list of images (torchvision's detection models) as a model of one image batch
    ``(1, C, H, W)``, returning that image's outputs (``boxes``, ``labels``, ``scores``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Any:
        return self.model([image[0]])[0]


# --- export --------------------------------------------------------------------------------------------------------
def export(
    model: torch.nn.Module,
    example_input: Any,
    path: str | os.PathLike[str],
    format: str = "onnx",
    dynamic_batch: bool = True,
    verify: bool = True,
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    normalization: Mapping[str, Any] | None = None,
    keyword_inputs: bool = False,
    dynamic_length: bool = False,
    traced: bool = False,
) -> ExportResult:
    """Export ``model`` to ``path`` as ``format`` (``'onnx'``, ``'pt2'`` or ``'torchscript'``) and verify it.

    Args:
        example_input: one batch as the model is called, ``model(example_input)``: a tensor, or a
            tuple/list/dict of tensors (passed as the single argument, as the training loop does).
        dynamic_batch: the batch dimension (dimension 0 of every input) may vary; verified at the
            example's batch size and at batch size 1. A batch of one is doubled for capturing, since
            exporters treat a size-1 dimension as fixed.
        verify: load the file back with its runtime and compare its outputs with the eager model's;
            a difference over the dtype's tolerance (:data:`TOLERANCES`) raises :class:`ExportError`
            naming the output, and the file is removed.
        opset: the ONNX opset (``format='onnx'`` only); default: the exporter's.
        metadata: JSON-able facts stored in the file (the xt-training version is always added).
        normalization: the data's normalisation (``{'mean', 'std'}`` along dimension 1) that
            ``example_input`` went through: the exported graph applies it in front of the model, so the
            file takes raw inputs (:mod:`xt_training.preprocessing`); the metadata says so.
        keyword_inputs: ``example_input`` is a dict the model is called with as ``model(**example_input)``
            (text models, :func:`~xt_training.text.text_forward`); the exported inputs are its keys.
        dynamic_length: dimension 1 of every input of two or more dimensions is one dynamic length
            (token sequences padded per batch); verified also with the inputs padded by zeros.
        traced: ONNX through the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``), for
            models written to be traced whose shapes depend on tensor values (torchvision's detection
            models). Python control flow follows the example input, so only for such models: others,
            with branches on values, are refused by the default exporter rather than traced wrongly.

    The model is exported in ``eval()`` mode on its own device, and its mode is restored afterwards.
    """
    check_format(format, verify)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 1):
        raise ConfigError(f"opset must be a positive integer, not {opset!r}")
    if opset is not None and format != "onnx":
        raise ConfigError(f"opset applies to the onnx format, not {format}; drop --opset")
    if traced and format != "onnx":
        raise ConfigError(f"traced=True applies to the onnx format, not {format}")
    path = writable_output(path)
    meta = _metadata(metadata)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    model = unwrap_model(model)
    if keyword_inputs:
        if not isinstance(example_input, Mapping) or not all(isinstance(k, str) for k in example_input):
            raise ConfigError(
                f"keyword_inputs=True calls model(**example_input), so the example input must be a dict with "
                f"string keys, not {describe(example_input)}"
            )
        model = KeywordInputs(model)
    if normalization is not None:
        meta["normalization"] = dict(normalization)
        meta.setdefault("inputs", "raw: the normalization is inside the model")  # unless the caller says more
        example_input = raw_inputs(example_input, normalization)
        model = with_preprocessing(model, normalization)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = to_device(example_input, device)
    n = _batch_size(_leaves(x, "the example input"), dynamic_batch)
    if dynamic_batch and n == 1:
        x, n = _resize(x, 2), 2
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                expected = model(x)
        except XtError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ConfigError(_misfit(model, example_input, e)) from None
        out_names = _names(expected, "output")
        _leaves(expected, "the model's output")
        onnx_writer = _write_onnx_traced if traced else _write_onnx
        writer = {"onnx": onnx_writer, "pt2": _write_pt2, "torchscript": _write_torchscript}[format]
        with _hushed():
            result, load = writer(
                model, x, path, (dynamic_batch, dynamic_length), opset, meta, out_names, device
            )
        result.inputs = result.inputs or _specs(x, "input", n if dynamic_batch else None)
        result.outputs = result.outputs or _specs(expected, "output", n if dynamic_batch else None)
        result.metadata = meta
        if verify:
            sizes = [n, 1] if dynamic_batch else [n]
            batches = [_resize(x, s) for s in sizes]
            if dynamic_length:
                batches.append(_pad_length(x, 3))
            try:
                with _hushed():
                    result.max_abs_diff = _verify(model, load(), batches, out_names)
            except ExportError as e:
                path.unlink(missing_ok=True)
                raise ExportError(
                    f"{e}; '{path}' was removed (verify=False, --no-verify, keeps it)"
                ) from None
            result.batch_sizes = sizes
            if dynamic_length:
                result.notes.append(
                    "verified also with every input padded by 3 zeros along dimension 1 (length)"
                )
    finally:
        model.train(was_training)
    result.size = path.stat().st_size
    return result


def _misfit(model: torch.nn.Module, example_input: Any, error: Exception) -> str:
    """Why the model failed on the example input: its shape beside the one the model's first layer expects."""

    return (
        f"the model fails on the example input {describe(example_input)} ({first_line(error)})"
        f"{model_expects(model, example_input)}; give an example input of the shape it was trained on (--input-shape)"
    )


@contextlib.contextmanager
def _hushed() -> Iterator[None]:
    """No warnings, log records or console output while exporting.

    Exporters warn, log and print a lot (a failed torch.export prints the partial graph to stderr); what
    matters -- the capture's error, the outputs -- is checked and reported in one place instead.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


Loader = Callable[[], Callable[[Any], "list[torch.Tensor]"]]


def _write_onnx(
    model: Any,
    x: Any,
    path: Path,
    dynamic: tuple[bool, bool],
    opset: int | None,
    meta: dict,
    out_names: list[str],
    device: Any,
) -> tuple[ExportResult, Loader]:
    in_names = _names(x, "input")
    args = (x, {}) if isinstance(x, dict) else (x,)  # else a dict x would be taken for keyword arguments
    try:
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(x, *dynamic),
            input_names=in_names,
            output_names=out_names,
            opset_version=opset,
            verbose=False,
        )
    except Exception as e:
        raise _capture_error(e, "onnx") from None
    graph = program.model.graph
    inputs = [_ir_spec(v) for v in graph.inputs]
    if dynamic[0]:
        fixed = [s for s in inputs if s.shape and isinstance(s.shape[0], int)]
        if fixed:
            raise ExportError(
                f"cannot export the model to onnx with a dynamic batch: its code fixes the batch size of input "
                f"{fixed[0].name!r} to {fixed[0].shape[0]}; export with --static-batch (dynamic_batch=False), "
                "or compute shapes from x.shape instead of constants"
            )
    program.model.metadata_props.update(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    )
    program.save(str(path))
    result = ExportResult(
        path,
        "onnx",
        0,
        inputs,
        [_ir_spec(v) for v in graph.outputs],
        dynamic[0],
        "torch.onnx.export(dynamo=True)",
        opset=program.model.opset_imports.get(""),
    )
    return result, _onnx_runner(path, in_names)


#: the opset of the TorchScript-based exporter when none is asked for (the newest it supports well)
_TRACED_OPSET = 17


def _write_onnx_traced(
    model: Any,
    x: Any,
    path: Path,
    dynamic: tuple[bool, bool],
    opset: int | None,
    meta: dict,
    out_names: list[str],
    device: Any,
) -> tuple[ExportResult, Loader]:
    """ONNX through the TorchScript-based exporter (``traced=True``): for models written to be traced,
    such as torchvision's detection models, whose shapes depend on tensor values so that torch.export
    cannot capture them. A dimension that depends on the values is named in the result, not sized."""
    import onnx

    in_names = _names(x, "input")
    axes = {name: dims for name, dims in zip(in_names, _dynamic_dims(x, *dynamic)) if dims}
    try:
        torch.onnx.export(
            model, (x, {}) if isinstance(x, dict) else (x,), str(path), dynamo=False, input_names=in_names,
            output_names=out_names, opset_version=opset or _TRACED_OPSET, dynamic_axes=axes or None,
        )  # fmt: skip
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"the TorchScript-based ONNX exporter cannot trace the model: {first_line(e)}"
        ) from None
    proto = onnx.load(str(path))
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.save(proto, str(path))

    def spec(value: Any) -> TensorSpec:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return TensorSpec(value.name, dims, str(dtype))

    result = ExportResult(
        path, "onnx", 0, [spec(v) for v in proto.graph.input], [spec(v) for v in proto.graph.output],
        dynamic[0], "torch.onnx.export(dynamo=False)", opset=opset or _TRACED_OPSET,
        notes=["traced by the TorchScript-based exporter: Python control flow follows the example input"],
    )  # fmt: skip
    return result, _onnx_runner(path, in_names)


def _onnx_runner(path: Path, in_names: list[str]) -> Loader:
    """Loads ``path`` into ONNX Runtime; the loaded function runs it on a batch shaped as the example input."""

    def load() -> Callable[[Any], list[torch.Tensor]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"ONNX Runtime cannot load the exported model: {first_line(e)}") from None
        wanted = [i.name for i in session.get_inputs()]

        def run(xb: Any) -> list[torch.Tensor]:
            feed = dict(zip(in_names, (t.detach().cpu().numpy() for t in _leaves(xb, "input"))))
            try:
                outputs = session.run(None, {name: feed[name] for name in wanted})
            except Exception as e:
                n = _batch_size(_leaves(xb, "input"), False)
                raise ExportError(
                    f"ONNX Runtime cannot run the exported model on a batch of {n}: {first_line(e)}"
                ) from None
            return [torch.from_numpy(o) for o in outputs]

        return run

    return load


def _ir_spec(value: Any) -> TensorSpec:
    """An ONNX graph input/output as a TensorSpec: symbolic dimensions by name, dtype as numpy names it."""
    dims = [d if isinstance(d, int) else str(d) for d in (value.shape or [])]
    try:
        dtype = str(value.dtype.numpy())
    except (AttributeError, TypeError, ValueError):
        dtype = str(value.dtype).lower()
    return TensorSpec(value.name, dims, dtype)


def _write_pt2(
    model: Any,
    x: Any,
    path: Path,
    dynamic: tuple[bool, bool],
    opset: int | None,
    meta: dict,
    out_names: list[str],
    device: Any,
) -> tuple[ExportResult, Loader]:
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(x, *dynamic))
    except Exception as e:
        raise _capture_error(e, "pt2") from None
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(meta)})
    result = ExportResult(path, "pt2", 0, [], [], dynamic[0], "torch.export.export")

    def load() -> Callable[[Any], list[torch.Tensor]]:
        module = torch.export.load(str(path)).module()
        return lambda xb: _leaves(module(xb), "the exported model's output")

    return result, load


def _write_torchscript(
    model: Any,
    x: Any,
    path: Path,
    dynamic: tuple[bool, bool],
    opset: int | None,
    meta: dict,
    out_names: list[str],
    device: Any,
) -> tuple[ExportResult, Loader]:
    """``torch.jit.script`` keeps Python control flow; models it cannot compile are traced on the example."""
    notes = []
    try:
        module, method = torch.jit.script(model), "torch.jit.script"
    except Exception as script_error:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            try:
                module, method = torch.jit.trace(model, (x,), strict=False), "torch.jit.trace"
            except Exception as e:
                raise _capture_error(e, "torchscript") from None
        notes.append(
            f"torch.jit.script failed ({first_line(script_error)}), so the model was traced: control flow "
            "follows the example batch"
        )
        tracer = {first_line(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
        notes += [f"tracer: {line}" for line in sorted(tracer)[:3]]
    torch.jit.save(module, str(path), _extra_files={METADATA_FILE: json.dumps(meta)})
    result = ExportResult(path, "torchscript", 0, [], [], dynamic[0], method, notes=notes)

    def load() -> Callable[[Any], list[torch.Tensor]]:
        loaded = torch.jit.load(str(path), map_location=device)
        return lambda xb: _leaves(loaded(xb), "the exported model's output")

    return result, load


# --- verification ---------------------------------------------------------------------------------------------
def _verify(
    model: Any, run: Callable[[Any], list[torch.Tensor]], batches: list[Any], names: list[str]
) -> float:
    """The largest absolute difference between ``run`` and the eager model over ``batches``; raises over tolerance."""
    worst = 0.0
    for xb in batches:
        n = _batch_size(_leaves(xb, "input"), False)
        try:
            with torch.no_grad():
                expected = _leaves(model(xb), "the model's output")
        except Exception as e:
            raise ExportError(
                f"the model itself fails on a batch of {n} ({type(e).__name__}: {first_line(e)}), so its batch "
                "size is not dynamic; export with --static-batch (dynamic_batch=False)"
            ) from None
        try:
            got = run(xb)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(
                f"the exported model fails on a batch of {n}: {type(e).__name__}: {first_line(e)}"
            ) from None
        if len(got) != len(expected):
            raise ExportError(
                f"the exported model returns {len(got)} outputs, the eager model {len(expected)}"
            )
        for name, e, g in zip(names, expected, got):
            e, g = e.detach().cpu(), g.detach().cpu()
            if tuple(g.shape) != tuple(e.shape):
                raise ExportError(
                    f"output {name!r} has shape {list(g.shape)} in the exported model but {list(e.shape)} in "
                    f"the eager model at batch size {n}"
                )
            if e.numel() == 0:
                continue
            diff = (g.double() - e.double()).abs()
            diff[(g == e) | (g.isnan() & e.isnan())] = (
                0  # equal infinities and NaNs in both are no difference
            )
            largest = float(diff.max())
            dtype = str(e.dtype).removeprefix("torch.")
            atol, rtol = TOLERANCES.get(dtype, (0.0, 0.0))
            tolerance = atol + rtol * float(e.double().abs().nan_to_num(0, 0, 0).max())
            if not largest <= tolerance:
                raise ExportError(
                    f"output {name!r} of the exported model differs from the eager model's by up to {largest:.3g} "
                    f"at batch size {n} (tolerance {tolerance:.3g} for {dtype})"
                )
            worst = max(worst, largest)
    return worst


def _capture_error(e: BaseException, format: str) -> ExportError:
    """One line: what kept the exporter from capturing the model, the exporter's own reason, what to try."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = _ANSI.sub("", str(root))
    reason = f"{type(root).__name__}: {first_line(text)}"
    call = re.search(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(\S.*)', text)
    where = f" (at {Path(call[1]).name}:{call[2]} in {call[3]}: `{call[4].strip()}`)" if call else ""
    fixed = re.search(r"specialized it to be a constant \((\d+)\)", text)
    if "DataDependent" in type(root).__name__ or "data-dependent" in text:
        what = "its control flow depends on tensor values"
        hint = "write the branch with torch.where or torch.cond"
        if format != "torchscript":
            hint = f"try --format torchscript (torch.jit.script keeps Python control flow), or {hint}"
    elif fixed:
        what = f"its code fixes the batch size to {fixed[1]}"
        hint = "export with --static-batch (dynamic_batch=False), or compute shapes from x.shape instead of constants"
    else:
        what = "the exporter cannot capture it"
        others = [f for f in ("torchscript", "pt2") if f != format]
        hint = f"try --format {others[0]}"
    return ExportError(f"cannot export the model to {format}: {what}; {reason}{where}; {hint}")


def first_input(loader: Iterable[Any]) -> Any:
    """The ``x`` of the loader's first ``(x, y)`` batch; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):  # iterating a loader draws from the global RNG
        batch = next(iter(loader), None)
    if batch is None:
        raise ConfigError("the data's loader is empty, so there is no example batch; pass --input-shape")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(
            f"the data yields {describe(batch)}, not (x, y) pairs, so export cannot take x from it; pass "
            "--input-shape, or call xt_training.exporting.export(model, example_input, path)"
        )
    return batch[0]


def export_trained(
    save_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    loader: Iterable[Any],
    format: str = "onnx",
    *,
    quiet: bool = False,
    normalization: dict[str, list[float]] | None = None,
) -> ExportResult:
    """Export the best model of a finished ``F.train`` run to ``save_dir/model.<suffix>`` (``F.train(export=...)``).

    A copy of ``model`` on the CPU gets the weights of ``save_dir/checkpoints/best.pt`` (the final
    weights when there is none), so the caller's model is left as training left it; the example input
    is the first batch of ``loader``. ``normalization`` (the data's, ``{'mean', 'std'}`` along dim 1)
    goes into the exported graph, which then takes raw inputs.
    """
    save_dir = Path(save_dir)
    net = copy.deepcopy(unwrap_model(model)).cpu()
    meta: dict[str, Any] = {"model": type(net).__name__}
    best = checkpoints_dir(save_dir) / BEST
    notes = []
    if best.is_file():
        state = load_checkpoint(best, net)
        meta["checkpoint"] = best.name
        if isinstance(state.get("epoch"), int):
            meta["epoch"] = state["epoch"]
    else:
        notes.append(
            "no checkpoints/best.pt (the monitored value never improved): exported the final weights"
        )
    try:
        result = export(
            net, first_input(loader), save_dir / f"model{SUFFIXES[format]}", format, metadata=meta,
            normalization=normalization,
        )  # fmt: skip
    except XtError as e:
        raise type(e)(
            f"training finished (checkpoints in {checkpoints_dir(save_dir)}), but exporting the best model "
            f"failed: {e}"
        ) from None
    result.notes[:0] = notes
    if not quiet:
        print(result, flush=True)
    return result
