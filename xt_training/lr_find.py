"""``F.lr_find``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates"), as Lightning's
``Tuner.lr_find`` and Ignite's ``FastaiLRFinder`` run it.

The model trains for up to ``num_steps`` optimizer steps while the learning rate grows exponentially from
``min_lr`` to ``max_lr``; the loss of each step, smoothed, draws the curve, and the test stops early once
that loss diverges. The steps are the :class:`~xt_training.Runner`'s own (devices, dict batches,
``forward_fn``, precision, clipping), with one callback that sets the rate and records the loss. The
model's weights and buffers, the optimizer's state and every random number generator are put back
afterwards exactly as they were.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .batch import describe, map_tensors
from .errors import ConfigError, NonFiniteLossError
from .files import prepare_dir, write_json
from .rng import capture_rng, loader_generators, restore_rng
from .runner import Runner, check_instance

__all__ = ["lr_find", "LRFindResult", "RULE", "check_range"]

#: how the suggestion is chosen, as the result and ``xt lr-find`` say it
RULE = "steepest descent of the smoothed loss against log(lr) (Lightning's rule)"
# Lightning's: the first points are the smoothed loss settling in, the last is where it blows up
_SKIP_BEGIN, _SKIP_END = 10, 1
CURVE_FILE, PLOT_FILE = "lr_find.json", "lr_find.png"


@dataclass
class LRFindResult:
    """The curve of a range test and the learning rate it suggests.

    Attributes:
        lrs: the learning rate of each step.
        losses: the smoothed loss at each step (what the plot shows and the suggestion reads).
        raw_losses: each step's batch loss, as the loss function returned it.
        suggestion: the suggested learning rate; None where too few steps ran to tell (see ``note``).
        suggestion_index: the step (from 0) of ``suggestion`` in ``lrs``.
        rule: how the suggestion was chosen (:data:`RULE`).
        stopped_early: whether the loss diverged before ``num_steps`` (the curve ends there).
        note: why there is no suggestion, or why the curve ends early; empty otherwise.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    suggestion_index: int | None
    rule: str
    stopped_early: bool
    note: str = ""

    def summary(self) -> str:
        """One line: the suggestion and the rule that chose it, or why there is none."""
        steps = f"{len(self.lrs)} steps, lr {self.lrs[0]:.2e} to {self.lrs[-1]:.2e}"
        if self.suggestion is None:
            return f"no suggested learning rate ({steps}): {self.note}"
        note = f"; {self.note}" if self.note else ""
        return f"suggested learning rate: {self.suggestion:.3g} ({RULE}; {steps}{note})"

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the curve as ``lr_find.json`` and its plot as ``lr_find.png`` into ``directory``; their paths."""
        directory = Path(directory)
        curve, picture = directory / CURVE_FILE, directory / PLOT_FILE
        # NaN/inf (a diverged loss) as null: the file stays strict JSON
        write_json(curve, {k: _strict(v) for k, v in asdict(self).items()})
        self.plot(picture)
        return curve, picture

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the smoothed loss against the learning rate (log scale), the suggestion marked; needs matplotlib."""
        fig = _figure_class()(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        if self.suggestion is not None:
            point = (self.suggestion, self.losses[self.suggestion_index])
            ax.plot(*point, "o", color="red", label=f"suggestion {self.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("learning-rate range test")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = Path(path)
        fig.savefig(path, dpi=100)
        return path


def lr_find(
    train_loader: Iterable[Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    device: str | torch.device | None = None,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    early_stop_threshold: float | None = 4.0,
    beta: float = 0.98,
    forward_fn: Callable[[torch.nn.Module, Any], tuple[Any, Any]] | None = None,
    precision: str = "32",
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> LRFindResult:
    """Run the learning-rate range test: train ``num_steps`` steps at exponentially growing rates; suggest one.

    Step ``i`` (from 0) trains one batch at ``lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``,
    set in every param group of ``optimizer``, and records that batch's loss (computed before the step).
    The curve is the loss smoothed as Lightning and fastai smooth it: an exponential moving average with
    ``beta``, bias-corrected (``avg / (1 - beta ** (i + 1))``). The test stops early when the smoothed
    loss diverges: it is NaN/inf, or above ``early_stop_threshold`` times its lowest value so far (while
    that is positive; ``None``: only NaN/inf). The loader is gone through again as often as
    ``num_steps`` needs. The suggestion is the rate where the smoothed loss falls fastest against
    ``log(lr)``, leaving out the first 10 points and the last one (Lightning's ``suggestion()``); a good
    starting rate, often below the best one: the plot shows the whole curve.

    Afterwards the model's weights and buffers (and its device and train/eval modes), the optimizer's
    state and learning rates, and Python's, NumPy's, torch's and the loader's random number generators
    are as they were before, bit for bit, whether the test ended or failed.

    ``train_loader``, ``model``, ``optimizer``, ``loss_fn``, ``device``, ``forward_fn``, ``precision``,
    ``clip_grad_norm`` and ``clip_grad_value`` are as for ``F.train`` (dict batches and the model's own loss
    included).

    Args:
        min_lr, max_lr: the range of learning rates, ``0 < min_lr < max_lr``.
        num_steps: the steps of the test (at least 2).
        early_stop_threshold: stop once the smoothed loss exceeds this multiple of its best; ``None``: never.
        beta: the smoothing of the loss, in ``[0, 1)``.
        save_dir: a directory to write the curve (``lr_find.json``) and its plot (``lr_find.png``;
            needs matplotlib, the ``plot`` extra) into.
        quiet: print nothing; else the result's :meth:`~LRFindResult.summary` and the files written.

    Returns:
        An :class:`LRFindResult`: ``lrs``, ``losses`` (smoothed), ``raw_losses``, ``suggestion``.
    """
    check_range(min_lr, max_lr, num_steps, early_stop_threshold, beta)
    _check_optimizer(optimizer)
    if save_dir is not None:
        _figure_class()  # a missing matplotlib is said now, not after the test
        save_dir = prepare_dir(save_dir)
    saved = _Saved(model, optimizer)
    rng, generators = None, loader_generators(train_loader)
    try:
        # (it sets the first lr: inside the try, to be undone whatever fails next)
        test = _RangeTest(optimizer, min_lr, max_lr, num_steps, early_stop_threshold, beta)
        # no loggers: the loop's own output (progress, a summary line per pass over a short loader) would
        # tell nothing here, where the curve is the result
        runner = Runner(
            model, loss_fn, optimizer, device=device, forward_fn=forward_fn, scheduler_step=None,
            log_every_n_steps=num_steps, loggers=[], precision=precision, clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value, callbacks=[test],
        )  # fmt: skip
        # once the Runner moved the model: on a GPU, CUDA is initialised then, and its RNG is saved too
        rng = capture_rng(generators)
        model.train()
        while not test.done:
            try:
                runner(train_loader, "lr_find")
            except NonFiniteLossError:
                # the Runner checks the loss of a pass's first batch; a test that diverged there is over
                if not test.diverged:
                    raise
    finally:
        saved.restore()
        if rng is not None:
            restore_rng(rng, generators)
    result = test.result()
    if not quiet:
        print(result.summary(), flush=True)
    if save_dir is not None:
        curve, picture = result.save(save_dir)
        if not quiet:
            print(f"wrote {curve} and {picture}", flush=True)
    return result


class _RangeTest:
    """The callback of the test: sets each step's learning rate, records its loss, stops the Runner."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        min_lr: float,
        max_lr: float,
        num_steps: int,
        threshold: float | None,
        beta: float,
    ):
        self.optimizer, self.num_steps, self.threshold, self.beta = optimizer, num_steps, threshold, beta
        self.schedule = [min_lr * (max_lr / min_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self.average = 0.0
        self.best = math.inf
        self.diverged = False
        self._set_lr(0)

    @property
    def done(self) -> bool:
        return self.diverged or len(self.lrs) == self.num_steps

    def _set_lr(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule[step]

    def on_train_batch_end(self, run: Any, batch: Any, step: int, y_pred: Any, loss: torch.Tensor) -> None:
        i = len(self.lrs)
        raw = loss.item()  # a host read per step: the test's whole point is each step's loss
        self.average = self.beta * self.average + (1 - self.beta) * raw
        smoothed = self.average / (1 - self.beta ** (i + 1))
        self.lrs.append(self.schedule[i])
        self.raw_losses.append(raw)
        self.losses.append(smoothed)
        # the ratio means nothing for a loss that goes below 0 (a log-likelihood): NaN/inf only there
        too_high = self.threshold is not None and 0 < self.best < smoothed / self.threshold
        self.diverged = i > 0 and (not math.isfinite(smoothed) or too_high)
        self.best = min(self.best, smoothed)
        if self.done:
            run.stop_requested = True  # the Runner ends the pass after this step
        else:
            self._set_lr(i + 1)

    def result(self) -> LRFindResult:
        index, note = _steepest(self.lrs, self.losses)
        if self.diverged:
            why = f"the smoothed loss diverged at step {len(self.lrs)} of {self.num_steps}, lr {self.lrs[-1]:.2e}"
            note = f"{note}; {why}" if note else why
        return LRFindResult(
            lrs=self.lrs,
            losses=self.losses,
            raw_losses=self.raw_losses,
            suggestion=None if index is None else self.lrs[index],
            suggestion_index=index,
            rule=RULE,
            stopped_early=self.diverged,
            note=note,
        )


def _steepest(lrs: list[float], losses: list[float]) -> tuple[int | None, str]:
    """The index where ``losses`` fall fastest against log(lr), the ends left out; or None and why."""
    end = len(losses) - _SKIP_END
    points = [i for i in range(_SKIP_BEGIN, end) if math.isfinite(losses[i])]
    if len(points) < 2:
        return None, (
            f"{len(losses)} points leave fewer than 2 between the first {_SKIP_BEGIN} and the last {_SKIP_END}; "
            "run more steps (num_steps), or a lower min_lr where the loss diverged early"
        )
    values = torch.tensor([losses[i] for i in points], dtype=torch.float64)
    where = torch.tensor([math.log(lrs[i]) for i in points], dtype=torch.float64)
    slopes = torch.gradient(values, spacing=(where,))[0]
    return points[int(torch.argmin(slopes))], ""


class _Saved:
    """The model's and optimizer's state as they were (on the CPU), to put back exactly."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.weights = _copy_to_cpu(model.state_dict())
        self.optimizer_state = _copy_to_cpu(optimizer.state_dict())
        self.modes = [m.training for m in model.modules()]
        devices = {t.device for t in [*model.parameters(), *model.buffers()]}
        self.device = devices.pop() if len(devices) == 1 else None

    def restore(self) -> None:
        if self.device is not None:
            self.model.to(self.device)
        self.model.load_state_dict(self.weights)  # copied into the same tensors: the optimizer's stay valid
        # onto the parameters' devices, in their dtypes (as it was saved from them)
        self.optimizer.load_state_dict(self.optimizer_state)
        for module, mode in zip(self.model.modules(), self.modes):
            module.training = mode


def _strict(value: Any) -> Any:
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _copy_to_cpu(state: Any) -> Any:
    # state_dict() holds the live tensors; the copy must not change while the test trains
    return map_tensors(lambda t: t.detach().to("cpu", copy=True), state)


def check_range(
    min_lr: Any, max_lr: Any, num_steps: Any, early_stop_threshold: Any = 4.0, beta: Any = 0.98
) -> None:
    """Refuse, in one line each, a range test that cannot run: checked before anything is built or trained."""
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigError(f"{name} must be a positive number, e.g. 1e-7, not {value!r}")
    if min_lr >= max_lr:
        raise ConfigError(
            f"min_lr ({min_lr:g}) must be below max_lr ({max_lr:g}): the test raises the rate from one to the "
            "other, e.g. min_lr=1e-7, max_lr=10"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(f"num_steps must be an integer of at least 2 (e.g. 100), not {num_steps!r}")
    threshold = early_stop_threshold
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 1
    ):
        raise ConfigError(
            f"early_stop_threshold must be a number above 1 (e.g. 4) or None (stop only on NaN/inf), not {threshold!r}"
        )
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ConfigError(f"beta must be in [0, 1) (e.g. 0.98; 0: no smoothing), not {beta!r}")


def _check_optimizer(optimizer: Any) -> None:
    check_instance("optimizer", optimizer)
    if not all(hasattr(optimizer, m) for m in ("param_groups", "state_dict", "load_state_dict")):
        raise ConfigError(
            "optimizer must be a torch optimizer (the test sets its param groups' lr and restores its state), "
            f"not {describe(optimizer)}"
        )


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure  # lazy: the plot extra, imported only to draw
    except ImportError:
        raise ConfigError(
            "the plot lr_find.png needs matplotlib, which is not installed: pip install matplotlib "
            "(or xt-training[plot])"
        ) from None
    return Figure
