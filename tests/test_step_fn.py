"""Your own training step: F.train(..., step_fn=fn, optimizer={...}, scheduler={...})."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest
import torch
from conftest import ENV, XT, xt
from test_fault_tolerance import SignalAt, assert_same_weights
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.errors import ConfigError, XtError
from xt_training.utils import functional as F

# A GAN on 1-D data drawn from N(4, 0.5): pytorch/examples' dcgan step (the discriminator's step, then the
# generator's), each network with its own optimizer. The same code is an `xt train` config file below.
GAN = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.ModuleDict({
        "g": nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)),
        "d": nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)),
    })
    optimizer = {name: torch.optim.Adam(model[name].parameters(), lr=1e-2, betas=(0.5, 0.999)) for name in "gd"}
    scheduler = {"g": torch.optim.lr_scheduler.StepLR(optimizer["g"], step_size=2, gamma=0.5)}
    bce = nn.BCEWithLogitsLoss()

    def step_fn(model, batch, optimizers):
        real = batch[0]
        ones, zeros = torch.ones_like(real), torch.zeros_like(real)
        fake = model["g"](torch.randn(len(real), 1))
        optimizers["d"].zero_grad()
        loss_d = bce(model["d"](real), ones) + bce(model["d"](fake.detach()), zeros)
        loss_d.backward()
        optimizers["d"].step()
        optimizers["g"].zero_grad()
        loss_g = bce(model["d"](fake), ones)
        loss_g.backward()
        optimizers["g"].step()
        return {"loss_d": loss_d, "loss_g": loss_g}
    """
)
DATA = 4 + 0.5 * torch.randn(256, 1, generator=torch.Generator().manual_seed(1))


def gan():
    namespace: dict = {}
    exec(GAN, namespace)  # a fresh GAN, its weights drawn from seed 0
    return namespace


def train_gan(save_dir, epochs=3, signal_at=None, **options):
    """The GAN on DATA, 8 batches an epoch; SIGTERM when item ``signal_at`` is fetched the 2nd time (epoch 2)."""
    g = gan()
    loader = DataLoader(SignalAt(DATA, torch.zeros(256), signal_at, nth=2), batch_size=32, shuffle=True)
    options = {"monitor": "train/loss_g", "mode": "min", "quiet": True, **options}
    F.train(save_dir, loader, g["model"], g["optimizer"], epochs, None, scheduler=g["scheduler"],
            step_fn=g["step_fn"], **options)  # fmt: skip
    return g


def generated_mean(model):
    with torch.no_grad():
        return model["g"](torch.randn(2000, 1, generator=torch.Generator().manual_seed(2))).mean().item()


def test_a_gan_step_trains_both_networks_and_checkpoints_both_optimizers(tmp_path):
    before = generated_mean(gan()["model"])
    g = train_gan(tmp_path, epochs=6, loggers=["jsonl"])
    after = generated_mean(g["model"])
    assert abs(before - 4) > 3 and abs(after - 4) < 1, (before, after)  # the generator moved to the data
    history = json.loads((tmp_path / "history.json").read_text())
    assert set(history[0]) == {"epoch", "lr", "train/loss_d", "train/loss_g"}
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train/loss_d", "train/loss_g", "lr/g", "lr/d"} <= set(logged)  # each optimizer's rate
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    # both optimizers' states, each stepped once per batch by step_fn (and never by the loop)
    assert set(state["optimizer"]) == {"g", "d"}
    for name, opt in g["optimizer"].items():
        saved = state["optimizer"][name]
        assert saved["state"][0]["step"].item() == 6 * 8
        assert_same_weights(saved["state"][0], opt.state_dict()["state"][0])
    assert state["scheduler"] == {"g": g["scheduler"]["g"].state_dict()}
    assert g["optimizer"]["g"].param_groups[0]["lr"] == 1e-2 * 0.5**3  # stepped once per epoch
    assert state["config"]["optimizer"] == "{g: Adam, d: Adam}"


def test_sigterm_in_a_gan_step_resumes_bit_identical(tmp_path):
    reference = train_gan(tmp_path / "ref", checkpoint_every_n_steps=3, scheduler_step="batch")
    with pytest.raises(SystemExit):
        train_gan(tmp_path / "run", signal_at=5, checkpoint_every_n_steps=3, scheduler_step="batch")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["phase"] == "train"
    resumed = train_gan(tmp_path / "run", checkpoint_every_n_steps=3, scheduler_step="batch", resume=True)
    assert_same_weights(resumed["model"].state_dict(), reference["model"].state_dict())
    for name in "gd":
        a, b = resumed["optimizer"][name].state_dict(), reference["optimizer"][name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        for i in a["state"]:
            assert_same_weights(a["state"][i], b["state"][i])
    assert resumed["scheduler"]["g"].state_dict() == reference["scheduler"]["g"].state_dict()
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()


# the GAN as an `xt train` config file, which SIGKILLs its own process at the KILL_AT-th item fetched
CONFIG = GAN + textwrap.dedent(
    """
    import os, signal
    from torch.utils.data import DataLoader, Dataset

    class Data(Dataset):
        def __init__(self):
            self.x = 4 + 0.5 * torch.randn(256, 1, generator=torch.Generator().manual_seed(1))
            self.fetched = 0
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.fetched += 1
            if self.fetched == int(os.environ.get("KILL_AT", 0)):
                os.kill(os.getpid(), signal.SIGKILL)
            return (self.x[i],)

    train_loader = DataLoader(Data(), batch_size=32, shuffle=True)
    loss_fn = None
    epochs = 3
    monitor, mode = "train/loss_g", "min"
    checkpoint_every_n_steps = 3
    resume = bool(os.environ.get("RESUME"))
    """
)


@pytest.mark.slow  # three `xt` processes (~30 s on a shared machine)
def test_xt_train_config_with_step_fn_resumes_bit_identical_after_sigkill(tmp_path):
    (tmp_path / "gan.py").write_text(CONFIG)

    def start(save_dir, **env):
        return subprocess.Popen([XT, "train", "gan.py", "--save-dir", save_dir, "-q"], cwd=tmp_path,
                                env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    # killed in epoch 2 (the 14th of 24 batches), after its checkpoints of steps 3, 6, 9 and 12
    runs = [start("ref"), start("run", KILL_AT=str(256 + 5 * 32 + 1))]
    (_, ref_err), (_, run_err) = (proc.communicate(timeout=300) for proc in runs)
    assert runs[0].returncode == 0, ref_err
    assert runs[1].returncode == -signal.SIGKILL, run_err
    xt("train", "gan.py", "--save-dir", "run", "-q", cwd=tmp_path, env={**ENV, "RESUME": "1"})
    ref, run = (
        torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True) for d in ("ref", "run")
    )
    assert_same_weights(run["model"], ref["model"])
    for name in "gd":
        assert run["optimizer"][name]["param_groups"] == ref["optimizer"][name]["param_groups"]
        for i in ref["optimizer"][name]["state"]:
            assert_same_weights(run["optimizer"][name]["state"][i], ref["optimizer"][name]["state"][i])
    assert run["scheduler"] == ref["scheduler"]
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(8, 4), nn.Linear(2, 8)

    def forward(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


def vae_terms(y_pred, x):
    recon, mu, logvar = y_pred
    reconstruction = nn.functional.mse_loss(recon, x)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    return reconstruction, kl


def test_a_vae_step_logs_each_value_and_validates_with_forward_and_loss_fn(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(96, 8)
    model = VAE()
    seen = []

    def step_fn(model, batch, optimizer):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        optimizer.zero_grad()
        reconstruction, kl = vae_terms(model(batch[0]), batch[0])
        loss = reconstruction + 0.1 * kl
        loss.backward()
        optimizer.step()
        return {"loss": loss, "reconstruction": reconstruction, "kl": kl.item()}  # numbers too

    history = F.train(tmp_path, DataLoader(TensorDataset(x[:64]), batch_size=16), model,
                      torch.optim.Adam(model.parameters(), lr=1e-2), 3, lambda y_pred, x: sum(vae_terms(y_pred, x)),
                      val_loader=DataLoader(TensorDataset(x[64:]), batch_size=16), step_fn=step_fn,
                      forward_fn=lambda model, batch: (model(batch[0]), batch[0]), precision="bf16-mixed",
                      quiet=True)  # fmt: skip
    assert seen[0] == (True, torch.bfloat16)  # the step runs under the precision's autocast
    assert set(history[0]) == {"epoch", "lr", "train/loss", "train/reconstruction", "train/kl", "val/loss"}
    for (
        row
    ) in history:  # each value the mean over the epoch's batches (of equal size), in bfloat16's precision
        assert row["train/loss"] == pytest.approx(
            row["train/reconstruction"] + 0.1 * row["train/kl"], rel=1e-2
        )
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert (
        json.loads((tmp_path / "run.json").read_text())["monitor"] == "val/loss"
    )  # from the model's forward


def test_lbfgs_takes_its_closure_in_step_fn(tmp_path):
    # the loop leaves the step to step_fn, so an optimizer that needs a closure gets it there
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = nn.Linear(3, 1)

    def step_fn(model, batch, optimizer):
        x, y = batch

        def closure():
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        return optimizer.step(closure)

    F.train(tmp_path, DataLoader(TensorDataset(x, y), batch_size=64), model, torch.optim.LBFGS(model.parameters()),
            3, None, step_fn=step_fn, quiet=True)  # fmt: skip
    assert torch.allclose(model.bias, torch.tensor([0.3]), atol=1e-3)


def tiny(tmp_path, step_fn, **options):
    model = options.pop("model", None) or nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    opt = options.pop("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    return F.train(
        tmp_path / "run", loader, model, opt, 1, nn.MSELoss(), step_fn=step_fn, quiet=True, **options
    )


def plain_step(model, batch, optimizer):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(batch[0]), batch[1])
    loss.backward()
    optimizer.step()
    return loss


class ClipsGradients:
    def on_before_optimizer_step(self, run, optimizer):
        pass


@pytest.mark.parametrize(
    "step_fn, options, message",
    [
        (plain_step, {"accumulate_grad_batches": 2}, "accumulate_grad_batches=2 cannot apply: step_fn steps the optimizers itself; step them every 2 batches in step_fn, or leave it out"),
        (plain_step, {"clip_grad_norm": 1.0}, "clip_grad_norm=1.0 cannot apply: step_fn steps the optimizers itself; clip in step_fn before each optimizer.step() (torch.nn.utils.clip_grad_norm_), and leave clip_grad_norm out"),
        (plain_step, {"clip_grad_value": 0.5}, "clip_grad_value=0.5 cannot apply"),
        (plain_step, {"precision": "16-mixed"}, "precision='16-mixed' needs a GradScaler around each backward and optimizer step, and step_fn steps the optimizers itself; use precision='bf16-mixed' (no scaler needed) or '32'"),
        (plain_step, {"nonfinite_loss": "skip"}, "nonfinite_loss='skip' leaves out a batch's optimizer step"),
        (plain_step, {"train_metrics": {"mse": metrics.MSE()}}, "train_metrics take a forward's outputs, which a step_fn's training pass has none of"),
        (plain_step, {"monitor": "train/kl"}, "which way 'train/kl', a value of step_fn, improves is unknown; pass mode='min' or mode='max'"),
        (None, {"optimizer": {"a": torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)}}, "optimizer is a dict, which only your own step can use (the loop steps one optimizer); pass one optimizer, or step_fn=fn(model, batch, optimizers) that steps them"),
        (None, {"scheduler": {}}, "scheduler is a dict, which only your own step can use"),
        (plain_step, {"optimizer": {"g": torch.optim.SGD}}, "optimizer['g'] must be an optimizer instance (with step, zero_grad, state_dict and load_state_dict), not the class SGD"),
        (plain_step, {"optimizer": {}}, "a dict of optimizers needs one or more, named by strings"),
        ("step", {}, "step_fn must be a function fn(model, batch, optimizers), not str"),
    ],
)  # fmt: skip
def test_options_that_do_not_fit_step_fn_are_refused_before_training(tmp_path, step_fn, options, message):
    with pytest.raises(ConfigError) as error:
        tiny(tmp_path, step_fn, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "step_fn, options, message",
    [
        (lambda model, batch, optimizers: {"loss_g": torch.tensor(1.0)}, {}, "the run monitors 'train/loss' (best.pt), but step_fn returns no 'loss' (its values: 'loss_g'); return it, or pass monitor='train/NAME' and mode= for another value"),
        (lambda model, batch, optimizers: 1.5, {}, "step_fn must return the loss (a scalar tensor) or a dict of values"),
        (lambda model, batch, optimizers: {"loss": torch.ones(4)}, {}, "step_fn's value 'loss' is Tensor(4,) float32; its values must be scalars"),
        (plain_step, {"callbacks": [ClipsGradients()]}, "a callback has on_before_optimizer_step, which step_fn leaves out"),
    ],
)  # fmt: skip
def test_what_step_fn_returns_is_checked_at_the_first_step(tmp_path, step_fn, options, message):
    with pytest.raises(XtError) as error:
        tiny(tmp_path, step_fn, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_per_batch_schedulers_step_once_per_step_fn_call(tmp_path):
    model = nn.Linear(2, 1)
    opts = {
        "a": torch.optim.SGD(model.parameters(), lr=0.1),
        "b": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5**s) for k, o in opts.items()}

    def step_fn(model, batch, optimizers):
        loss = plain_step(model, batch, optimizers["a"])
        optimizers["b"].step()
        return loss

    history = tiny(tmp_path, step_fn, model=model, optimizer=opts, scheduler=scheds, scheduler_step="batch")
    assert [s.last_epoch for s in scheds.values()] == [2, 2]  # two batches
    assert history[0]["lr"] == 0.1  # the first optimizer's, at the start of the epoch
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "best.pt")
