"""``xt tune``: the command line of :func:`xt_optuna.tuning.tune`, taking every ``xt run`` option."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from xt_training.cli import parse_options, run_config, run_options

from .space import RUN_PARAMS, SPEC_FORMS, parse_pairs
from .tuning import PRUNERS, SAMPLERS, tune


@click.command("tune")
@click.argument(
    "space_file", metavar="[SPACE.py]", required=False, type=click.Path(exists=True, dir_okay=False)
)
@run_options
@click.option(
    "--search",
    multiple=True,
    metavar="KEY=SPEC",
    help=f"Search KEY (an `xt run` option: lr, batch-size, optimizer, epochs, ...; or model.OPTION, data.OPTION, "
    f"optimizer.OPTION, ...) over SPEC: {SPEC_FORMS}. Repeatable.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Trials to run now (with --jobs: in all).",
)
@click.option(
    "--study-dir",
    type=click.Path(file_okay=False),
    help="Study directory (study.json, study.db, trials/N/); default runs/tune-MODEL-DATA-TIME. An existing one continues.",
)
@click.option(
    "--pruner",
    type=click.Choice(PRUNERS),
    default="median",
    show_default=True,
    help="Stops hopeless trials early.",
)
@click.option(
    "--pruner-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the Optuna pruner, e.g. n_startup_trials=3.",
)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    default="tpe",
    show_default=True,
    help="Proposes the trials' values (grid: int and choice specs only).",
)
@click.option(
    "--sampler-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the Optuna sampler, e.g. n_startup_trials=5.",
)
@click.option(
    "--sampler-seed",
    type=int,
    help="Seed of the sampler, for repeatable proposals (--seed seeds each trial's training).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes on the same storage.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Start no trial after this time.",
)
@click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage, to share the study between machines: postgresql://..., mysql://..., journal:PATH "
    "(a file on a shared file system). Default sqlite:///STUDY_DIR/study.db.",
)
@click.option("--study-name", help="The study's name in the storage; default: the study directory's name.")
@click.option("-q", "--quiet", is_flag=True, help="No line per trial and no summary.")
@click.option("--nproc", type=int, hidden=True)  # `xt run --nproc N`'s, refused with the way to scale out
@click.pass_context
def tune_command(
    ctx: click.Context,
    space_file: str | None,
    search: tuple[str, ...],
    trials: int,
    study_dir: str | None,
    pruner: str,
    pruner_opt: tuple[str, ...],
    sampler: str,
    sampler_opt: tuple[str, ...],
    sampler_seed: int | None,
    jobs: int,
    timeout: float | None,
    storage: str | None,
    study_name: str | None,
    quiet: bool,
    nproc: int | None,
    **_: Any,
) -> None:
    """Search hyper-parameters with Optuna; every trial is an ordinary `xt run`.

    \b
    Example:
      xt tune --model mlp --data synthetic-classification --epochs 5 --metric accuracy \\
        --search lr=logfloat:1e-4:1e-1 --search model.hidden=int:16:256 \\
        --monitor val/accuracy --trials 30 --study-dir runs/tune1

    Trial N trains in STUDY_DIR/trials/N/ as `xt run` would (config.json, history.json, checkpoints/), so
    `xt run --config STUDY_DIR/trials/N/config.json` trains it again. Its value is the best --monitor
    (default val/loss) of its epochs. SPACE.py may define search_space(trial) -> {KEY: trial.suggest_...}
    instead of --search. `xt tune` on an existing study directory adds trials: with the same definition,
    or with none (only --trials, --jobs, ...); a different one is refused. `xt show STUDY_DIR` and
    `xt plot STUDY_DIR` summarise a study.
    """
    if nproc is not None and nproc != 1:
        raise click.UsageError(
            "--nproc: xt tune trains each trial in one process (distributed trials are not supported); "
            "scale out with --jobs N worker processes, or xt tune on several machines with one --storage URL"
        )
    if space_file and search:
        raise click.UsageError("give --search KEY=SPEC or a SPACE.py file, not both")
    defining = bool(space_file or search) or any(
        ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT) for name in RUN_PARAMS
    )
    if not defining and study_dir is None:
        raise click.UsageError(
            "define a study (--model NAME --data NAME --search KEY=SPEC), or continue one with --study-dir DIR"
        )
    if defining and not (space_file or search):
        raise click.UsageError(
            f"nothing to search: add --search KEY=SPEC (SPEC: {SPEC_FORMS}) or a SPACE.py defining search_space(trial)"
        )
    tune(
        run_config(ctx) if defining else None,
        parse_pairs(search) if search else space_file,
        study_dir=study_dir,
        trials=trials,
        pruner=pruner,
        pruner_options=parse_options(pruner_opt, "--pruner-opt"),
        sampler=sampler,
        sampler_options=parse_options(sampler_opt, "--sampler-opt"),
        sampler_seed=sampler_seed,
        jobs=jobs,
        timeout=timeout,
        storage=storage,
        study_name=study_name,
        quiet=quiet,
        plugins=ctx.find_root().params.get("plugins") or (),
    )
