"""The ``xt export`` command (plugin module: adds it through ``register_commands``; the work is in ``exporting``).

Nothing heavy is imported here: torch and the exporters load when the command runs, so ``xt --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..cli import parse_options, trust_option
from ..hookspecs import hookimpl

#: the formats of xt_training.exporting.FORMATS, named here so that listing commands does not import torch
FORMATS = ("onnx", "pt2", "torchscript")


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``'1,3,32,32'`` -> ``(1, 3, 32, 32)``."""
    if value is None:
        return None
    try:
        shape = tuple(int(part) for part in value.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise click.BadParameter(f"{value!r} is not a shape of positive integers, e.g. 1,3,32,32")
    return shape


def _format_of(fmt: str | None, output: str | None) -> str:
    """``--format``, else what ``-o`` ends with (``.onnx``, ``.pt2``), else onnx."""
    inferred = {".onnx": "onnx", ".pt2": "pt2"}.get(Path(output).suffix) if output else None
    if fmt is not None and inferred is not None and fmt != inferred:
        raise click.UsageError(f"-o {output} ends in .{inferred}, but --format is {fmt}; make them agree")
    return fmt or inferred or "onnx"


@click.command("export")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    metavar="|".join((*FORMATS, "...")),
    help="onnx (default; needs pip install onnx onnxscript onnxruntime), pt2 (torch.export), torchscript, or a "
    "plugin's format (xt-hf: hf).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Default: RUN_DIR/model.onnx (.pt2, .torchscript.pt).",
)
@click.option(
    "--checkpoint",
    metavar="best|last|FILE",
    help="Which checkpoint of RUN_DIR: best (default), last, or a checkpoint file.",
)
@click.option(
    "--dynamic-batch/--static-batch",
    default=True,
    show_default=True,
    help="Whether the batch size may vary in the exported model.",
)
@click.option("--opset", type=click.IntRange(min=1), help="ONNX opset; default: the exporter's.")
@click.option(
    "--input-shape",
    callback=_shape,
    metavar="N,C,H,W",
    help="Example input of random values, e.g. 1,3,32,32; default: one batch of the run's data.",
)
@click.option("--model", help="Model name of a CHECKPOINT outside a run directory (`xt list models`).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="Its options, e.g. num_classes=5.")
@click.option("--no-verify", is_flag=True, help="Do not load the file back and compare it with the model.")
@trust_option
def export_command(
    source: str,
    fmt: str | None,
    output: str | None,
    checkpoint: str | None,
    dynamic_batch: bool,
    opset: int | None,
    input_shape: tuple[int, ...] | None,
    model: str | None,
    model_opt: tuple[str, ...],
    no_verify: bool,
    trust: bool,
) -> None:
    """Export a trained model to ONNX, torch.export (.pt2) or TorchScript, and verify it.

    \b
    SOURCE is a run directory of any kind (`xt run`, `xt train`, F.train; its model is rebuilt and loaded
    from checkpoints/best.pt, or --checkpoint; the example input is one batch of its data, or of the
    input shape the run recorded) or a checkpoint file (outside a run: with --model and --input-shape).
    The data's normalisation goes into the exported model, which then takes raw inputs. The file is loaded back with its runtime
    (ONNX Runtime, torch.export.load, torch.jit.load) and compared with the model at two batch sizes.

    \b
    Examples:
      xt export runs/cnn-synthetic-images-20250101-120000
      xt export RUN_DIR --format pt2 -o model.pt2
      xt export best.pt --model cnn --model-opt num_classes=5 --input-shape 1,3,32,32
    """
    from ..runs import export_run  # lazy: imports torch

    if model_opt and model is None:
        raise click.UsageError("--model-opt needs --model NAME (the model of a checkpoint outside a run)")
    result = export_run(
        source,
        format=_format_of(fmt, output),
        output=output,
        checkpoint=checkpoint,
        dynamic_batch=dynamic_batch,
        opset=opset,
        input_shape=input_shape,
        model=model,
        model_options=parse_options(model_opt, "--model-opt"),
        verify=not no_verify,
        trust=trust,
    )
    click.echo(str(result))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(export_command)
