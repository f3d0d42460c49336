"""Reinforcement learning through the unchanged loop: examples/rl_cartpole.py (REINFORCE on CartPole-v1).

Needs gymnasium (the ``rl`` extra); without it the module is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from xt_training.utils import functional as F

pytest.importorskip("gymnasium")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rl_cartpole.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--epochs", "2", "--batches-per-epoch", "2", "--episodes-per-batch", "2"]


def load_example():
    spec = importlib.util.spec_from_file_location("rl_cartpole", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rl = load_example()


def run_example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"{' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def train(save_dir: Path, epochs: int = 2, batches: int = 3, episodes_cls: type | None = None, **kwargs):
    """The example's set-up, with the data set in hand; returns (history, episodes)."""
    torch.manual_seed(0)
    policy = rl.policy_network()
    episodes = (episodes_cls or rl.Episodes)(policy, batches=batches, episodes_per_batch=2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    history = F.train(save_dir, episodes, policy, optimizer, epochs=epochs, loss_fn=rl.reinforce_loss,
                      train_metrics={"return": rl.EpisodeReturn(episodes)}, device="cpu", quiet=True,
                      **kwargs)  # fmt: skip
    return history, episodes


def test_discounted_returns_by_hand():
    # G_2 = 1, G_1 = 1 + 0.5 * 1, G_0 = 1 + 0.5 * 1.5
    assert rl.discounted_returns([1.0, 1.0, 1.0], gamma=0.5).tolist() == [1.75, 1.5, 1.0]
    assert rl.discounted_returns([0.0, 2.0], gamma=1.0).tolist() == [2.0, 2.0]


def test_reinforce_loss_raises_the_probability_of_better_than_average_actions():
    logits = torch.zeros(2, 2, requires_grad=True)
    actions, returns = torch.tensor([0, 1]), torch.tensor([10.0, 0.0])  # action 0 paid more than action 1
    rl.reinforce_loss(logits, (actions, returns)).backward()
    step = -logits.grad  # the direction gradient descent moves the logits
    assert step[0, 0] > 0 > step[0, 1] and step[1, 1] < 0 < step[1, 0]


def test_the_example_runs_and_logs_the_mean_return_to_console_history_and_tensorboard(tmp_path):
    out = run_example(*SMALL, "--save-dir", "run", "--logger", "tensorboard", cwd=tmp_path)
    assert "return" in out.stdout.splitlines()[1] and "run completed: 2 epochs" in out.stdout
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    returns = [row["train/return"] for row in history]
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(8 <= r <= 500 for r in returns)  # CartPole-v1 episodes last 8 to 500 steps, 1 point each
    assert (run / "checkpoints" / "best.pt").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    epoch_values = [e.value for e in acc.Scalars("epoch/train/return")]
    assert epoch_values == pytest.approx(returns)
    assert [e.step for e in acc.Scalars("epoch/train/return")] == [2, 4]  # optimizer steps: 2 per epoch
    assert acc.Scalars("train/return")  # the running value at logging steps, like any metric


def test_the_return_is_the_mean_over_each_epochs_episodes_and_runs_repeat_exactly(tmp_path):
    history, episodes = train(tmp_path / "a", epochs=3)
    per_epoch = 3 * 2  # batches x episodes per batch
    assert len(episodes.episode_returns) == 3 * per_epoch
    for i, row in enumerate(history):
        played = episodes.episode_returns[i * per_epoch : (i + 1) * per_epoch]
        assert row["train/return"] == pytest.approx(sum(played) / per_epoch)

    again, _ = train(tmp_path / "b", epochs=3)
    assert again == history  # torch.manual_seed fixes the environments' seeds and the sampled actions
    torch.manual_seed(1)
    assert rl.Episodes(rl.policy_network()).play()[0].tolist() != episodes.play()[0].tolist()


class StoppedEpisodes(rl.Episodes):
    """Sends this process SIGTERM as the second epoch's second batch is handed out, as a preemption would:
    the loop finishes that step and stops, one batch before the end of the epoch."""

    def __iter__(self):
        self.passes = getattr(self, "passes", 0) + 1
        for i, batch in enumerate(super().__iter__(), 1):
            if self.passes == 2 and i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    expected, whole = train(tmp_path / "whole", epochs=3)
    with pytest.raises(SystemExit) as stop:
        train(tmp_path / "stopped", epochs=3, episodes_cls=StoppedEpisodes)
    assert stop.value.code == 0
    stopped_at = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert (stopped_at["epoch"], stopped_at["position"]["step"]) == (1, 2)  # epoch 2, step 2 of 3
    # the returns of the epoch's 4 episodes so far (2 batches of 2) are kept with the position
    assert stopped_at["position"]["metrics"]["return"]["returns"] == whole.episode_returns[6:10]
    history, _ = train(tmp_path / "stopped", epochs=3, resume=True)
    # The same losses and mean returns: the resumed epoch replays its first two batches only to reach
    # its position, and the returns played before the stop come back from the checkpoint.
    assert history == expected


def test_a_worker_process_is_refused_because_it_would_play_a_stale_policy(tmp_path):
    episodes = rl.Episodes(rl.policy_network())
    loader = DataLoader(episodes, batch_size=None, num_workers=1)
    with pytest.raises(RuntimeError, match="must play with the live policy"):
        F.train(tmp_path, loader, episodes.policy, torch.optim.Adam(episodes.policy.parameters()), epochs=1,
                loss_fn=rl.reinforce_loss, device="cpu", quiet=True)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--episodes-per-batch", "0"], "argument --episodes-per-batch: must be a positive integer, got 0"),
        (["--logger", "tensorbord"], "error: unknown logger 'tensorbord'; did you mean 'tensorboard'?"),
    ],
)
def test_a_bad_option_is_a_one_line_error(tmp_path, args, message):
    out = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode in (1, 2)
    assert "Traceback" not in out.stderr and message in out.stderr.strip().splitlines()[-1]  # after the usage


def test_without_gymnasium_the_example_says_what_to_install(tmp_path):
    code = f"import sys, runpy; sys.modules['gymnasium'] = None; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == "this example needs gymnasium: pip install gymnasium"


@pytest.mark.slow  # about 10 s on one core: the example's learning, at a fixed seed
def test_the_example_learns_to_balance_the_pole(tmp_path):
    run_example("--epochs", "12", "--save-dir", "run", "--quiet", cwd=tmp_path)
    returns = [row["train/return"] for row in json.loads((tmp_path / "run" / "history.json").read_text())]
    assert returns[0] < 50  # about a random policy's 22: the policy starts near uniform
    assert returns[-1] > 150, returns  # the mean of the last epoch's 32 episodes; 500 is the most possible
    assert not any(math.isnan(r) for r in returns)
