"""Built-in learning-rate schedulers: torch's, with defaults taken from the run (plugin module).

torch's schedulers need values only the run knows (``CosineAnnealingLR`` needs ``T_max``, ``OneCycleLR``
the total number of steps); these factories take ``epochs`` and ``steps_per_epoch`` (optimizer steps) from the CLI, so
``xt run --scheduler cosine`` works without options. torch's option names are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ..errors import ConfigError
from ..hookspecs import hookimpl


def _need(name: str, value: int | None, scheduler: str) -> int:
    if value is None:
        raise ConfigError(
            f"scheduler '{scheduler}' needs {name} (the CLI passes it; in Python pass {name}=...)"
        )
    return value


def _at_least_one(name: str, value: int | None, scheduler: str) -> None:
    """An explicit 0 must not fall back to the default (nor divide by zero at the first epoch's end)."""
    if value is not None and value < 1:
        raise ConfigError(f"scheduler '{scheduler}': {name} must be at least 1 epoch, not {value}")


def step(
    optimizer: Any, *, step_size: int | None = None, gamma: float = 0.1, epochs: int | None = None
) -> Any:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (default: a third of the epochs).

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        step_size: epochs between two multiplications; default: a third of the epochs.
        gamma: the factor.
        epochs: the run's epochs (the CLI passes them).
    """
    from torch.optim.lr_scheduler import StepLR

    _at_least_one("step_size", step_size, "step")
    step_size = step_size or max(1, _need("step_size or epochs", epochs, "step") // 3)
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def multi_step(
    optimizer: Any, *, milestones: Sequence[int] | None = None, gamma: float = 0.1, epochs: int | None = None
) -> Any:
    """Multiply the learning rate by ``gamma`` at each milestone epoch (default: at 1/2 and 3/4 of the epochs).

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        milestones: the epochs after which the learning rate is multiplied; default: at 1/2 and 3/4 of the epochs.
        gamma: the factor.
        epochs: the run's epochs (the CLI passes them).
    """
    from torch.optim.lr_scheduler import MultiStepLR

    if milestones is None:
        epochs = _need("milestones or epochs", epochs, "multi-step")
        milestones = sorted({max(1, epochs // 2), max(1, 3 * epochs // 4)})
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def exponential(optimizer: Any, *, gamma: float = 0.9) -> Any:
    """Multiply the learning rate by ``gamma`` every epoch.

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        gamma: the factor, every epoch.
    """
    from torch.optim.lr_scheduler import ExponentialLR

    return ExponentialLR(optimizer, gamma=gamma)


def cosine(
    optimizer: Any, *, T_max: int | None = None, eta_min: float = 0.0, epochs: int | None = None
) -> Any:  # noqa: N803
    """Cosine annealing from the initial learning rate to ``eta_min`` over ``T_max`` epochs (default: all).

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        T_max: epochs from the initial learning rate to ``eta_min``; default: the run's.
        eta_min: the learning rate at the end.
        epochs: the run's epochs (the CLI passes them).
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR

    _at_least_one("T_max", T_max, "cosine")
    return CosineAnnealingLR(
        optimizer, T_max=T_max or _need("T_max or epochs", epochs, "cosine"), eta_min=eta_min
    )


def one_cycle(
    optimizer: Any,
    *,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    anneal_strategy: Literal["cos", "linear"] = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
    """One-cycle policy, stepped every optimizer step; ``max_lr`` defaults to the optimizer's learning rate (``--lr``).

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        max_lr: the peak learning rate; default: the optimizer's.
        pct_start: the share of the steps spent increasing the learning rate.
        anneal_strategy: ``'cos'`` or ``'linear'`` annealing.
        div_factor: the initial learning rate is ``max_lr / div_factor``.
        final_div_factor: the last learning rate is the initial one divided by this.
        epochs: the run's epochs (the CLI passes them).
        steps_per_epoch: optimizer steps per epoch (the CLI passes them).
    """
    from torch.optim.lr_scheduler import OneCycleLR

    return OneCycleLR(
        optimizer,
        max_lr=max_lr if max_lr is not None else optimizer.param_groups[0]["lr"],
        epochs=_need("epochs", epochs, "one-cycle"),
        steps_per_epoch=_need("steps_per_epoch", steps_per_epoch, "one-cycle"),
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def plateau(
    optimizer: Any,
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> Any:
    """Multiply the learning rate by ``factor`` when the monitored value stops improving for ``patience`` epochs.

    Args:
        optimizer: the run's optimizer (the CLI passes it).
        mode: ``'min'`` or ``'max'``, the direction of the monitored value (the CLI sets it).
        factor: the factor.
        patience: epochs without improvement before the learning rate is cut.
        threshold: the relative change that counts as an improvement.
        min_lr: the learning rate is never cut below this.
    """
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, min_lr=min_lr
    )


@hookimpl
def register_schedulers(register: Any) -> None:
    register("step", step, description="multiply the lr by gamma every step_size epochs (StepLR)")
    register(
        "multi-step", multi_step, description="multiply the lr by gamma at milestone epochs (MultiStepLR)"
    )
    register("exponential", exponential, description="multiply the lr by gamma every epoch (ExponentialLR)")
    register("cosine", cosine, description="cosine annealing over the run's epochs (CosineAnnealingLR)")
    register(
        "one-cycle",
        one_cycle,
        description="one-cycle policy, stepped every optimizer step (OneCycleLR)",
        interval="batch",
    )
    register(
        "plateau", plateau, description="reduce the lr when the monitored value stalls (ReduceLROnPlateau)"
    )
