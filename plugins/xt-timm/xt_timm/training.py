"""timm's optimizers and schedulers by name: ``create_optimizer_v2`` and ``create_scheduler_v2``."""

from __future__ import annotations

from typing import Any

from xt_training.errors import ConfigError


def timm_optimizer(
    opt: str, *, params: Any, lr: float | None = None, weight_decay: float = 0.0, **options: Any
) -> Any:
    """``timm.optim.create_optimizer_v2(params, opt=opt, lr=lr, weight_decay=weight_decay, **options)``.

    Args:
        params: the parameters to optimise (the CLI passes the model's).
        lr: the learning rate (``--lr``); None: the optimizer's own default.
        weight_decay: applied to every parameter.
        options: the optimizer's own (``betas=(0.9, 0.99)``, ``momentum=0.9``).
    """
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(params, opt=opt, lr=lr, weight_decay=weight_decay, **options)


def timm_scheduler(
    sched: str,
    optimizer: Any,
    *,
    epochs: int | None = None,
    warmup_epochs: int = 0,
    warmup_lr: float = 1e-5,
    min_lr: float = 0.0,
    **options: Any,
) -> EpochSchedule:
    """``timm.scheduler.create_scheduler_v2(optimizer, sched, num_epochs=epochs, ...)``, stepped once per epoch.

    Args:
        epochs: the schedule's length (the CLI passes the run's epochs).
        warmup_epochs: epochs of linear warmup from ``warmup_lr`` to the optimizer's learning rate.
        warmup_lr: the learning rate of the first epoch when there is a warmup.
        min_lr: the learning rate the decay ends at.
        options: the other options of ``create_scheduler_v2`` (``cycle_limit=2``, ``decay_rate=0.5``,
            ``decay_epochs=30``, ``decay_milestones=[30, 60]``, ``k_decay``, ``noise``).
    """
    from timm.scheduler import create_scheduler_v2

    if epochs is None:
        raise ConfigError(
            f"scheduler 'timm.{sched}' needs epochs (the CLI passes it; in Python pass epochs=...)"
        )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        step_on_epochs=True,
        **options,
    )
    return EpochSchedule(scheduler)


class EpochSchedule:
    """A timm scheduler stepped as torch's are: ``step()`` at the end of each epoch is timm's
    ``step(epoch)`` with the number of epochs done, as timm's own training script calls it."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.epoch = 0

    def step(self) -> None:
        self.epoch += 1
        self.scheduler.step(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.scheduler.load_state_dict(state["scheduler"])
