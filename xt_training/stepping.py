"""Your own training step (``step_fn``): several optimizers and schedulers as one, and the values a step returns.

With ``step_fn(model, batch, optimizers)``, the Runner calls it for each training batch in place of its
forward, loss, backward and optimizer step (a GAN's two optimizers, a VAE's extra terms); the loop keeps
the rest. A dict of optimizers (schedulers) is held as one :class:`Optimizers` (:class:`Schedulers`), so
that checkpoints save every one's state (``{name: state_dict}``) and resume restores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .batch import batch_size, describe
from .errors import CheckpointError, ConfigError, LossError

__all__ = ["Optimizers", "Schedulers", "StepValues", "as_one", "check_step_options", "kind"]


class _Named(dict):  # type: ignore[type-arg]
    """Named optimizers or schedulers as one object: ``state_dict()`` is ``{name: its state_dict}``."""

    what = ""  # 'optimizers', 'schedulers': for the messages

    def __init__(self, objects: Mapping[str, Any]):
        if not objects or not all(isinstance(name, str) for name in objects):
            raise ConfigError(
                f"a dict of {self.what} needs one or more, named by strings, e.g. {{'g': opt_g, 'd': opt_d}}, "
                f"not {describe(objects)}"
            )
        super().__init__(objects)

    def state_dict(self) -> dict[str, Any]:
        return {name: obj.state_dict() for name, obj in self.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self):
            raise CheckpointError(
                f"the checkpoint holds the {self.what} {', '.join(map(repr, state))}, this run has "
                f"{', '.join(map(repr, self))}; resume with the same ones"
            )
        for name, obj in self.items():
            obj.load_state_dict(state[name])

    def __repr__(self) -> str:
        return kind(self)


class Optimizers(_Named):
    """Named optimizers as one optimizer; step_fn gets the dict."""

    what = "optimizers"

    def __init__(self, optimizers: Mapping[str, Any]):
        super().__init__(optimizers)  # their names first
        for name, opt in optimizers.items():
            missing = [
                m for m in ("step", "zero_grad", "state_dict", "load_state_dict") if not hasattr(opt, m)
            ]
            if isinstance(opt, type) or missing:
                what = f"the class {opt.__name__}" if isinstance(opt, type) else describe(opt)
                raise ConfigError(
                    f"optimizer[{name!r}] must be an optimizer instance (with step, zero_grad, state_dict and "
                    f"load_state_dict), not {what}"
                )

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.values() for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.values():
            opt.zero_grad(set_to_none=set_to_none)

    def learning_rates(self) -> dict[str, float]:
        """``lr/NAME`` of each optimizer's first param group, ``lr/NAME/1``... of its others."""
        return {
            f"lr/{name}" + (f"/{i}" if i else ""): float(group["lr"])
            for name, opt in self.items()
            for i, group in enumerate(opt.param_groups)
        }


class Schedulers(_Named):
    """Named LR schedulers as one: ``step(value)`` steps each (``ReduceLROnPlateau`` on ``value``)."""

    what = "schedulers"

    def step(self, value: float | None = None) -> None:
        for scheduler in self.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(value)
            else:
                scheduler.step()


def kind(obj: Any) -> str | None:
    """What the run's configuration records of an optimizer or scheduler: its class, or each one's by name."""
    if obj is None:
        return None
    if isinstance(obj, (Optimizers, Schedulers)):
        return "{" + ", ".join(f"{name}: {type(o).__name__}" for name, o in obj.items()) + "}"
    return type(obj).__name__


def as_one(step_fn: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any]:
    """The optimizer(s) and scheduler(s) as the loop holds them: a dict (only with ``step_fn``) as one object."""
    if step_fn is None:
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
            if isinstance(obj, Mapping):
                raise ConfigError(
                    f"{name} is a dict, which only your own step can use (the loop steps one optimizer); "
                    f"pass one {name}, or step_fn=fn(model, batch, optimizers) that steps them"
                )
        return optimizer, scheduler
    if isinstance(step_fn, type) or not callable(step_fn):
        raise ConfigError(f"step_fn must be a function fn(model, batch, optimizers), not {describe(step_fn)}")
    if isinstance(optimizer, Mapping) and not isinstance(optimizer, Optimizers):
        optimizer = Optimizers(optimizer)
    if isinstance(scheduler, Mapping) and not isinstance(scheduler, Schedulers):
        scheduler = Schedulers(scheduler)
    return optimizer, scheduler


def check_step_options(
    accumulate_grad_batches: int,
    clip_grad_norm: float | None,
    clip_grad_value: float | None,
    precision: str,
    nonfinite_loss: str,
    distributed: bool,
) -> None:
    """Refuse the loop options that act on the backward and optimizer step, which ``step_fn`` takes itself."""
    why = "step_fn steps the optimizers itself"
    if accumulate_grad_batches > 1:
        raise ConfigError(
            f"accumulate_grad_batches={accumulate_grad_batches} cannot apply: {why}; step them every "
            f"{accumulate_grad_batches} batches in step_fn, or leave it out"
        )
    for option, value, fn in (("clip_grad_norm", clip_grad_norm, "clip_grad_norm_"),
                              ("clip_grad_value", clip_grad_value, "clip_grad_value_")):  # fmt: skip
        if value is not None:
            raise ConfigError(
                f"{option}={value} cannot apply: {why}; clip in step_fn before each optimizer.step() "
                f"(torch.nn.utils.{fn}), and leave {option} out"
            )
    if precision == "16-mixed":
        raise ConfigError(
            f"precision='16-mixed' needs a GradScaler around each backward and optimizer step, and {why}; "
            "use precision='bf16-mixed' (no scaler needed) or '32'"
        )
    if nonfinite_loss == "skip":
        raise ConfigError(
            f"nonfinite_loss='skip' leaves out a batch's optimizer step, and {why}; skip it in step_fn "
            "(if not torch.isfinite(loss): return loss), and leave nonfinite_loss='raise'"
        )
    if distributed:
        raise ConfigError(
            "step_fn does not run under DDP (torchrun, xt run --nproc): its optimizers' gradients would not be "
            "synchronised across ranks; train on one process"
        )


class StepValues:
    """The values a training pass's ``step_fn`` returns: the loss for the loop's own loss, the rest summed here.

    Each value's pass value is its mean per example (weighted by the batch's size, as the loss is), over the
    steps that returned it. The sums stay on the value's device: nothing is read to the host per step.
    """

    def __init__(self, expected: str | None, device: torch.device):
        self.expected = expected  # the value the run monitors, checked at the first step
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, returned: Any, batch: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """A step's return value: its loss (or None) and all its values, detached."""
        if isinstance(returned, torch.Tensor):
            returned = {"loss": returned}
        elif not isinstance(returned, Mapping):
            raise LossError(
                f"step_fn must return the loss (a scalar tensor) or a dict of values, e.g. "
                f"{{'loss_g': loss_g, 'loss_d': loss_d}}, not {describe(returned)}"
            )
        if self.expected is not None:
            if self.expected not in returned:
                names = ", ".join(map(repr, returned)) or "none"
                raise ConfigError(
                    f"the run monitors 'train/{self.expected}' (best.pt), but step_fn returns no {self.expected!r} "
                    f"(its values: {names}); return it, or pass monitor='train/NAME' and mode= for another value"
                )
            self.expected = None
        values = {name: _scalar(name, value, self.device) for name, value in returned.items()}
        n = batch_size(batch)
        for name, value in values.items():
            if name != "loss":  # the loss is the loop's, as without step_fn
                total = value.float() * n
                self.sums[name] = self.sums[name] + total if name in self.sums else total
                self.counts[name] = self.counts.get(name, 0) + n
        return values.get("loss"), values

    def compute(self) -> dict[str, float]:
        return {name: (total / self.counts[name]).item() for name, total in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sums = {name: total.to(self.device) for name, total in state["sums"].items()}
        self.counts = dict(state["counts"])


def _scalar(name: str, value: Any, device: torch.device) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # e.g. loss.item()
        return torch.tensor(float(value), device=device)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise LossError(
            f"step_fn's value {name!r} is {describe(value)}; its values must be scalars (0-d tensors or "
            "numbers): reduce it, e.g. .mean()"
        )
    return value.detach().reshape(())
