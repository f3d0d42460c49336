"""Weight averaging in F.train: an exponential moving average of the weights (EMA) or stochastic weight
averaging (SWA), both through :class:`torch.optim.swa_utils.AveragedModel`.

- **EMA** (``ema_decay=d``): ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)``,
  updated after every optimizer step. The first update copies the weights, each later one computes
  ``average = d * average + (1 - d) * weights``. ``use_buffers=True`` averages the buffers the same way
  (BatchNorm's running statistics), as torch's EMA example and timm's ``ModelEma`` do: the weights change
  a little at each step, so the statistics of the recent steps fit their average, and no pass over the
  data is needed.
- **SWA** (``swa_start=E, swa_lr=lr``): ``AveragedModel(model)``, an equal average, updated after the
  training pass of every epoch from ``E`` on; from then on ``SWALR(optimizer, swa_lr)`` sets the learning
  rate (annealed over 10 epochs, SWALR's default) instead of the run's scheduler, as in torch's recipe. Its
  buffers are the trained model's (``use_buffers=False``): the weights averaged are epochs apart, and an
  average of statistics gathered under other weights is not the statistics of the averaged weights, so
  after the last epoch's training pass ``update_bn`` computes them over the training data.

Evaluation passes use the averaged weights (copied into the model for the pass, then back) once there are
any: before epoch ``E``, SWA evaluates the trained weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from .batch import to_device
from .checkpoint import unwrap_model
from .errors import ConfigError

__all__ = ["Averaging", "check_averaging"]


def check_averaging(ema_decay: Any, swa_start: Any, swa_lr: Any, epochs: int) -> None:
    """Refuse averaging options that cannot work, before training."""
    if ema_decay is not None and swa_start is not None:
        raise ConfigError("ema_decay and swa_start are two ways to average the weights; choose one")
    number = (int, float)
    if ema_decay is not None and (
        isinstance(ema_decay, bool) or not isinstance(ema_decay, number) or not 0 < ema_decay < 1
    ):
        raise ConfigError(
            f"ema_decay must be a number between 0 and 1 (the weight of the average so far, e.g. 0.999), "
            f"not {ema_decay!r}"
        )
    if swa_start is None:
        if swa_lr is not None:
            raise ConfigError(
                "swa_lr is the learning rate of SWA, which needs swa_start=EPOCH (its first epoch)"
            )
        return
    if isinstance(swa_start, bool) or not isinstance(swa_start, int) or swa_start < 1:
        raise ConfigError(
            f"swa_start must be the epoch (from 1) from which SWA averages the weights, e.g. 8, not {swa_start!r}"
        )
    if swa_start > epochs:
        raise ConfigError(
            f"swa_start={swa_start} is after the last epoch ({epochs}), so nothing would be averaged; "
            f"give swa_start={epochs} or less"
        )
    if swa_lr is None:
        raise ConfigError(
            "swa_start needs swa_lr, the learning rate SWALR anneals to from that epoch on (e.g. swa_lr=0.05)"
        )
    if isinstance(swa_lr, bool) or not isinstance(swa_lr, number) or not swa_lr > 0:
        raise ConfigError(f"swa_lr must be a positive number (a learning rate), not {swa_lr!r}")


class Averaging:
    """The averaged weights of one run: updated, swapped in for evaluation, checkpointed (see the module)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ema_decay: float | None,
        swa_start: int | None,
        swa_lr: float | None,
    ):
        self.model = unwrap_model(model)
        self.swa_start = swa_start
        self.swa_scheduler: SWALR | None = None
        self.ema_groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        if ema_decay is not None:
            self.config: dict[str, Any] = {"ema_decay": ema_decay}
            multi_avg_fn = get_ema_multi_avg_fn(ema_decay)
            self.averaged = AveragedModel(self.model, multi_avg_fn=multi_avg_fn, use_buffers=True)
            # the tensors update_parameters averages, grouped by device and dtype as it groups them, once
            groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for averaged, current in zip(_tensors(self.averaged.module), _tensors(self.model), strict=True):
                pair = groups.setdefault((averaged.device, averaged.dtype), ([], []))
                pair[0].append(averaged.detach())
                pair[1].append(current.detach())
            self.ema_groups = list(groups.values())
        else:
            self.config = {"swa_start": swa_start, "swa_lr": swa_lr}
            self.averaged = AveragedModel(self.model)
            # made now, it leaves the learning rate as it is until its first step, after epoch swa_start
            self.swa_scheduler = SWALR(optimizer, swa_lr=swa_lr)

    @property
    def count(self) -> int:
        """How many weights are averaged (``n_averaged``, kept on the CPU: reading it does not wait for a GPU)."""
        return int(self.averaged.n_averaged)

    def update(self) -> None:
        """Average in the model's weights as they are now.

        That is ``AveragedModel.update_parameters``, but for an EMA step after the first, which applies the
        same averaging function to the same groups of tensors, gathered once: ``update_parameters`` gathers
        them again at every call and copies the count to the device, which on a GPU waits for the step's
        kernels to finish (a host-device synchronisation per optimizer step).
        """
        if self.ema_groups and self.count:
            for averaged, current in self.ema_groups:
                self.averaged.multi_avg_fn(averaged, current, self.averaged.n_averaged)  # (EMA ignores it)
            self.averaged.n_averaged += 1
        else:
            self.averaged.update_parameters(self.model)

    def swa(self, epoch: int) -> bool:
        """Whether SWA averages after the training pass of ``epoch``, and SWALR sets its learning rate."""
        return self.swa_start is not None and epoch >= self.swa_start

    def weights(self) -> torch.nn.Module:
        """The model whose weights evaluation uses and checkpoints save as ``model``."""
        return self.averaged.module if self.count else self.model

    def update_bn(self, batches: Iterable[Any], forward_fn: Callable[..., Any], device: torch.device) -> None:
        """BatchNorm's statistics for the averaged weights, from one pass over ``batches`` (torch's ``update_bn``).

        ``update_bn`` calls the model on each batch's first element: wrapped as one-element lists, whole
        batches reach ``forward_fn``, fed as the loop feeds them (dict batches, a ``forward_fn`` of yours).
        """
        if self.count:
            fed = ([to_device(batch, device)] for batch in batches)
            update_bn(fed, _Feed(self.averaged.module, forward_fn))

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The averaged weights in the model for an evaluation; the trained ones back afterwards."""
        if not self.count:
            yield
            return
        trained = _tensors(self.model)
        kept = [t.detach().clone() for t in trained]
        _copy(trained, _tensors(self.averaged.module))
        try:
            yield
        finally:
            _copy(trained, kept)

    def finish(self) -> None:
        """Leave the averaged weights in the model once training has ended: the weights it evaluated."""
        if self.count:
            _copy(_tensors(self.model), _tensors(self.averaged.module))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds besides the averaged weights (its ``model``): the trained ones to resume."""
        return {
            "count": self.count,
            "raw": self.model.state_dict() if self.count else None,  # else `model` is the trained weights
            "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, Any]) -> None:
        """Restore from a checkpoint's ``averaging`` and ``model`` (``weights``) after the model got ``weights``."""
        if state["count"]:
            self.averaged.module.load_state_dict(weights)
            self.model.load_state_dict(state["raw"])
        self.averaged.n_averaged.fill_(state["count"])
        if self.swa_scheduler is not None:
            self.swa_scheduler.load_state_dict(state["swa_scheduler"])


class _Feed(torch.nn.Module):
    """``update_bn``'s model: feeds a whole batch to ``model`` through ``forward_fn``."""

    def __init__(self, model: torch.nn.Module, forward_fn: Callable[..., Any]):
        super().__init__()
        self.model, self.forward_fn = model, forward_fn

    def forward(self, batch: Any) -> Any:
        return self.forward_fn(self.model, batch)


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers, in the order ``AveragedModel`` averages them."""
    return [*model.parameters(), *model.buffers()]


@torch.no_grad()
def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
