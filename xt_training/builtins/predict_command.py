"""The ``xt predict`` command: a built-in plugin module, added through ``register_commands`` like any plugin's.

It imports neither torch nor the model at module level: ``xt --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from ..cli import parse_options, trust_option
from ..hookspecs import hookimpl


@click.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file: .csv (classifiers: predicted class and probabilities), .npy or .pt (the outputs).",
)
@click.option(
    "--input",
    "inputs",
    type=click.Path(exists=True),
    help="Unlabelled inputs: a text file (one text per line) for a run with a tokenizer, a CSV file "
    "without the label column, a folder of images.",
)
@click.option("--data", help="Data set to predict on (`xt list data`); default: the run's.")
@click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="Data option, e.g. path=new.csv.")
@click.option("--split", help="Split of the data to predict; default: test (predict with --input).")
@click.option(
    "--checkpoint",
    default="best",
    show_default=True,
    metavar="best|last|FILE",
    help="best, last, or a checkpoint file.",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size of the inputs.")
@click.option("--device", help="cpu, cuda, ...; default: the run's device, else the accelerator, if any.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing.")
@trust_option
def predict_command(
    run_dir: str,
    out: str,
    inputs: str | None,
    data: str | None,
    data_opt: tuple[str, ...],
    split: str | None,
    checkpoint: str,
    batch_size: int | None,
    device: str | None,
    quiet: bool,
    trust: bool,
) -> None:
    """Write the predictions of a trained model, one row per example.

    \b
    Examples:
      xt predict runs/RUN_DIR -o predictions.csv                  (the run's test split)
      xt predict runs/RUN_DIR --input new.csv -o predictions.csv  (unlabelled rows)
      xt predict runs/RUN_DIR --input texts.txt -o predictions.csv

    RUN_DIR is a run directory of any kind: its model is rebuilt (from config.json or run.json) and
    loaded from the checkpoint. A run of F.train or `xt train` records no data by name: name it with
    --data. .csv and .npy files are written batch by batch.
    """
    from ..runs import predict_run  # lazy: imports torch

    path = predict_run(
        run_dir,
        out,
        inputs=inputs,
        data=data,
        data_options=parse_options(data_opt, "--data-opt"),
        split=split,
        checkpoint=checkpoint,
        batch_size=batch_size,
        device=device,
        trust=trust,
    )
    if not quiet:
        click.echo(f"wrote {path}")


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(predict_command)
