"""Reinforcement learning through the unchanged loop: REINFORCE with a baseline on gymnasium's CartPole-v1.

The seed's workflow, box by box -- every box is plain PyTorch, the arrows are one ``F.train`` call:

- data: :class:`Episodes`, an ``IterableDataset`` that plays fresh episodes with the current policy
  (under ``torch.no_grad()``) each time a batch is asked for, and yields ``(observations, (actions,
  returns))``. It is iterated lazily, one batch per optimizer step, so every batch is played by the
  policy as it is after the previous step: the gradient is on-policy.
- model: a small ``nn.Module`` from observations to action logits.
- loss: :func:`reinforce_loss`, ``loss_fn(logits, (actions, returns))``.
- metrics: :class:`EpisodeReturn`, the mean return of the episodes played in the pass. It follows the
  ordinary metric contract (``update``/``compute``/``reset``) but reads the episodes' returns from the
  dataset instead of the predictions, so it shows up in the console, ``history.json`` and TensorBoard
  (``epoch/train/return``) like any metric.

Run (needs ``pip install gymnasium``)::

    python examples/rl_cartpole.py --save-dir runs/cartpole --logger tensorboard

The defaults reach a mean return above 150 (500 is the most CartPole-v1 allows; a random policy gets
about 22) in well under a minute on two CPU cores. See docs/rl.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import IterableDataset

from xt_training.errors import XtError
from xt_training.utils import functional as F

try:
    import gymnasium as gym
except ImportError:
    sys.exit("this example needs gymnasium: pip install gymnasium")


def discounted_returns(rewards: Sequence[float], gamma: float) -> torch.Tensor:
    """The return from each step to the end of its episode: ``G_t = r_t + gamma * G_{t+1}``."""
    returns = []
    running = 0.0
    for r in reversed(rewards):
        running = r + gamma * running
        returns.append(running)
    return torch.tensor(returns[::-1], dtype=torch.float32)


class Episodes(IterableDataset):
    """Plays ``episodes_per_batch`` episodes with ``policy`` for each batch; a pass has ``batches`` batches.

    A batch is the concatenated steps of its episodes: observations ``(N, 4)``, actions ``(N,)`` and the
    discounted returns ``(N,)`` from each step to the end of its episode. The undiscounted return of every
    episode played is appended to ``episode_returns`` (CartPole pays 1 per step the pole stays up).

    Every random draw -- each episode's environment seed and each sampled action -- comes from torch's
    global RNG, so ``torch.manual_seed`` makes a run reproducible and the RNG states that F.train keeps
    in its checkpoints cover the episodes too.

    Iterate it in the training process (pass it to F.train as it is, or in a ``DataLoader`` with
    ``batch_size=None`` and no workers): a worker process would play with a stale copy of the policy.
    """

    def __init__(
        self,
        policy: nn.Module,
        env_id: str = "CartPole-v1",
        batches: int = 4,
        episodes_per_batch: int = 8,
        gamma: float = 0.99,
    ):
        self.policy = policy
        self.env = gym.make(env_id)
        self.batches = batches
        self.episodes_per_batch = episodes_per_batch
        self.gamma = gamma
        self.episode_returns: list[float] = []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(
                "Episodes must play with the live policy: iterate it in the training process "
                "(pass the dataset itself, or a DataLoader with num_workers=0)"
            )
        for _ in range(self.batches):  # lazily: each batch is played after the previous optimizer step
            episodes = [self.play() for _ in range(self.episodes_per_batch)]
            observations, actions, returns = (torch.cat(parts) for parts in zip(*episodes))
            yield observations, (actions, returns)

    @torch.no_grad()
    def play(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One episode with actions sampled from the policy: its observations, actions and returns."""
        device = next(self.policy.parameters()).device
        seed = int(torch.randint(2**31 - 1, ()))
        obs, _ = self.env.reset(seed=seed)
        observations, actions, rewards = [], [], []
        done = False
        while not done:
            x = torch.as_tensor(obs, dtype=torch.float32)
            probs = self.policy(x.to(device)).softmax(-1).cpu()
            action = int(torch.multinomial(probs, 1))
            obs, reward, terminated, truncated, _ = self.env.step(action)
            observations.append(x)
            actions.append(action)
            rewards.append(float(reward))
            done = terminated or truncated
        self.episode_returns.append(sum(rewards))
        return torch.stack(observations), torch.tensor(actions), discounted_returns(rewards, self.gamma)


def reinforce_loss(logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """REINFORCE with the batch's mean return as the baseline.

    Minimising ``-log pi(a|s) * advantage`` raises the probability of actions that led to more than the
    average return and lowers it for the others. The advantages are the returns standardised over the
    batch (the mean is the baseline; dividing by the spread keeps the step size steady as returns grow).
    """
    actions, returns = target
    advantages = (returns - returns.mean()) / (returns.std() + 1e-8)
    log_probs = logits.log_softmax(-1).gather(1, actions.unsqueeze(1)).squeeze(1)
    return -(log_probs * advantages).mean()


class EpisodeReturn:
    """The mean return of the episodes an :class:`Episodes` data set played since the last ``reset()``.

    The loop resets metrics at the start of every pass and calls ``compute()`` at its logging steps and
    at the end, so this is the running mean during an epoch and the epoch's mean in the history.
    ``update`` has nothing to do: the value does not depend on the predictions and targets.
    ``get_state``/``set_state`` (optional in the metric contract) carry the returns of a pass that was
    interrupted mid-epoch into its resumed part, so the epoch's mean comes out exactly as without the stop.
    """

    higher_is_better = True  # monitor="train/return" keeps the epoch with the highest return

    def __init__(self, episodes: Episodes):
        self.episodes = episodes
        self.reset()

    def update(self, y_pred: Any, y: Any) -> None:
        pass

    def update_size(self, n: int) -> None:
        pass  # size-only (see the metric contract): the loop keeps no outputs for this metric

    def compute(self) -> float:
        returns = self.returns()
        return sum(returns) / len(returns) if returns else math.nan

    def reset(self) -> None:
        self.start = len(self.episodes.episode_returns)
        self.earlier: list[float] = []  # the returns of an interrupted run's part of this pass

    def returns(self) -> list[float]:
        return self.earlier + self.episodes.episode_returns[self.start :]

    def get_state(self) -> dict[str, Any]:
        return {"returns": self.returns()}

    def set_state(self, state: dict[str, Any]) -> None:
        # a resumed pass replays the batches done before the stop: their episodes are not counted twice
        self.start = len(self.episodes.episode_returns)
        self.earlier = list(state["returns"])


def policy_network(hidden: int = 64) -> nn.Module:
    """CartPole's 4 observations -> logits of its 2 actions (push left, push right)."""
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/rl_cartpole", help="the run directory")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--batches-per-epoch", type=positive_int, default=4, help="optimizer steps per epoch")
    parser.add_argument("--episodes-per-batch", type=positive_int, default=8)
    parser.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="a tiny policy is fastest on the CPU")
    parser.add_argument(
        "--logger", action="append", default=[], help="a logger besides the console, e.g. tensorboard"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --save-dir where it stopped"
    )
    parser.add_argument("--quiet", action="store_true", help="no console output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    policy = policy_network()
    episodes = Episodes(policy, batches=args.batches_per_epoch, episodes_per_batch=args.episodes_per_batch,
                        gamma=args.gamma)  # fmt: skip
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    return F.train(
        args.save_dir,
        episodes,  # any iterable is a loader; this one has no __len__, so the progress shows no total
        policy,
        optimizer,
        epochs=args.epochs,
        loss_fn=reinforce_loss,
        train_metrics={"return": EpisodeReturn(episodes)},
        monitor="train/return",  # best.pt keeps the policy of the best epoch
        device=args.device,
        loggers=args.logger,
        quiet=args.quiet,
        resume=args.resume,
    )


if __name__ == "__main__":
    try:
        main()
    except XtError as e:  # a bad option, e.g. an unknown logger name: one line, not a traceback
        sys.exit(f"error: {e}")
