"""strategy='fsdp' on CPU (gloo) through torchrun: FSDP2 training, sharded checkpoints, exact resume."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import xt
from test_distributed import succeeded, torchrun
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import load_checkpoint, load_model, metrics
from xt_training.errors import CheckpointError, ConfigError
from xt_training.fsdp import default_units, named_units
from xt_training.utils import functional as F

# a small transformer, in a module of its own so that a run's run.json names a class the test can import
SEQNET = textwrap.dedent(
    """
    import torch
    from torch import nn

    class SeqNet(nn.Module):
        def __init__(self, width=32, blocks=2):
            super().__init__()
            self.width, self.blocks = width, blocks
            self.inp = nn.Linear(8, width)
            self.body = nn.Sequential(*[nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
                                        for _ in range(blocks)])
            self.head = nn.Linear(width, 3)

        def forward(self, x):
            return self.head(self.body(self.inp(x)).mean(1))

    def seq_data(n, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 6, 8, generator=g)
        return x, (x.sum(1) @ torch.randn(8, 3, generator=g)).argmax(1)

    def seq_model():
        torch.manual_seed(0)
        return SeqNet()
    """
)


def fsdp_job(tmp_path, body, nproc=2, mode=None):
    """``body`` run by torchrun with the model of SEQNET (and ``mode``) defined."""
    (tmp_path / "seqnet.py").write_text(SEQNET)
    head = f"sys.path.insert(0, {str(tmp_path)!r})\nfrom seqnet import SeqNet, seq_data, seq_model\nmode = {mode!r}\n"
    return torchrun(tmp_path, head + textwrap.dedent(body), nproc=nproc)


def seqnet(tmp_path, monkeypatch):
    (tmp_path / "seqnet.py").write_text(SEQNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import seqnet

    return seqnet


@pytest.mark.slow
def test_fsdp_trains_as_one_process_does_and_its_run_loads_in_one_process(tmp_path, monkeypatch):
    """2 ranks of per-rank batch 8 and 1 process of batch 16 see the same global batches (unshuffled): the
    same losses up to float rounding, with accumulation and clipping of the sharded gradients."""
    result = fsdp_job(
        tmp_path,
        """
        x, y = seq_data(357)
        train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=8)
        val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=10)  # 101 examples: ranks get 6 and 5 batches
        m = seq_model()
        hist = F.train(out, train, m, torch.optim.SGD(m.parameters(), lr=0.1), 3, nn.CrossEntropyLoss(),
                       val_loader=val, eval_metrics={"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()},
                       strategy="fsdp", shard=[nn.TransformerEncoderLayer], accumulate_grad_batches=2,
                       clip_grad_norm=0.5, quiet=True)
        # bf16 through FSDP's MixedPrecisionPolicy, parameters offloaded to the CPU, the default units
        m = seq_model()
        dtypes = []
        m.body[0].linear1.register_forward_pre_hook(lambda mod, args: dtypes.append(str(mod.weight.dtype)))
        bf16 = F.train(out + "-bf16", train, m, torch.optim.Adam(m.parameters(), lr=1e-3), 1, nn.CrossEntropyLoss(),
                       precision="bf16-mixed", strategy="fsdp", cpu_offload=True, quiet=True)
        sys.stdout.write(f"RANK {os.environ['RANK']} " + json.dumps([hist, bf16, dtypes[0]]) + "\\n")
        """,
    )
    assert succeeded(result), result.stderr[-3000:]
    ranks = [
        json.loads(line.split(" ", 2)[2]) for line in result.stdout.splitlines() if line.startswith("RANK")
    ]
    assert len(ranks) == 2 and ranks[0] == ranks[1], "every rank has the synced history"
    hist, bf16, dtype = ranks[0]
    assert dtype == "torch.bfloat16" and bf16[0]["train/loss"] < 1.2

    net = seqnet(tmp_path, monkeypatch)
    x, y = net.seq_data(357)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=10)
    m = net.seq_model()
    single = F.train(tmp_path / "single", DataLoader(TensorDataset(x[:256], y[:256]), batch_size=16), m,
                     torch.optim.SGD(m.parameters(), lr=0.1), 3, nn.CrossEntropyLoss(), val_loader=val,
                     eval_metrics={"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()}, accumulate_grad_batches=2,
                     clip_grad_norm=0.5, quiet=True)  # fmt: skip
    # tolerance: the reduce-scatter adds the ranks' gradients in another order than one backward does
    for got, want in zip(hist, single):
        assert got.keys() == want.keys()
        for k in ("train/loss", "val/loss", "val/auc"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), k
    out = tmp_path / "out"
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["class"] == "seqnet:SeqNet" and run["summary"]["class"] == "SeqNet"
    # the consolidated weights: one file, the plain model's keys, loaded by the one-process tools
    plain = load_model(out, "last")  # rebuilt from run.json
    for (name, p), q in zip(plain.state_dict().items(), m.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name
    # on the same weights, one process's metrics are the 2 ranks' synced ones (the shorter shard's extra forward
    # pass counted nothing)
    tested = F.test({"val": val}, plain, nn.CrossEntropyLoss(), {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()},
                    quiet=True)["val"]  # fmt: skip
    for k in ("loss", "acc", "auc"):
        assert tested[k] == pytest.approx(hist[-1][f"val/{k}"], rel=1e-6), k
    with pytest.raises(
        CheckpointError, match="is a sharded checkpoint .* the same weights in one file are in"
    ):
        load_checkpoint(out / "checkpoints" / "last.dcp", plain)
    # last.pt has no optimizer state or position: a resume without strategy='fsdp' is refused, not inexact
    with pytest.raises(ConfigError, match="holds the weights of a run of strategy='fsdp', whose state is in"):
        F.train(out, DataLoader(TensorDataset(x, y), batch_size=16), m, torch.optim.SGD(m.parameters(), lr=0.1), 4,
                nn.CrossEntropyLoss(), resume=True, quiet=True)  # fmt: skip


KILL_AND_RESUME = """
    import signal
    from torch.distributed.checkpoint import FileSystemWriter

    rank = int(os.environ["RANK"])

    def run(save_dir, resume=False):
        x, y = seq_data(240)
        g = torch.Generator().manual_seed(1)
        train = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=8, shuffle=True, generator=g)
        val = DataLoader(TensorDataset(x[96:], y[96:]), batch_size=16)
        m = seq_model()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        F.train(save_dir, train, m, opt, 2, nn.CrossEntropyLoss(), val_loader=val,
                eval_metrics={"acc": metrics.Accuracy()}, strategy="fsdp", shard=["TransformerEncoderLayer"],
                checkpoint_every_n_steps=3, resume=resume, quiet=True)
        return m, opt

    if mode == "first":
        run(f"{out}/ref")  # uninterrupted
        # rank 1 is killed as it writes its shard of the second checkpoint: the first must stay whole
        write, calls = FileSystemWriter.write_data, []

        def write_data(self, *args):
            calls.append(1)
            if len(calls) == 2 and rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return write(self, *args)

        FileSystemWriter.write_data = write_data
        run(f"{out}/cut")
    elif mode == "resume":
        run(f"{out}/cut", resume=True)
    else:  # 3 ranks load the 2 ranks' shards of the finished run (nothing is left to train)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        m, opt = run(f"{out}/cut", resume=True)
        model, optimizer = get_state_dict(m, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({"model": model, "optimizer": optimizer}, f"{out}/resharded.pt")
"""


@pytest.mark.slow
def test_fsdp_killed_midway_through_a_save_resumes_exactly_also_on_another_number_of_ranks(tmp_path):
    first = fsdp_job(tmp_path, KILL_AND_RESUME, mode="first")
    assert first.returncode != 0, first.stderr[-3000:]
    out = tmp_path / "out"
    cut = out / "cut" / "checkpoints"
    # the kill left the second save's directory incomplete beside the first, which last.dcp still names
    assert len(list(cut.glob(".last.dcp.*"))) == 2
    assert sorted(p.name for p in (cut / "last.dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "xt.0.pt", "xt.1.pt"
    ]  # fmt: skip
    assert torch.load(cut / "last.dcp" / "xt.0.pt", weights_only=True)["position"]["step"] == 3

    resumed = fsdp_job(tmp_path, KILL_AND_RESUME, mode="resume")
    assert succeeded(resumed), resumed.stderr[-3000:]
    assert len(list(cut.glob(".last.dcp.*"))) == 1, "the incomplete directory is removed"
    ref = torch.load(out / "ref" / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(cut / "last.pt", weights_only=True)
    assert got["history"] == ref["history"] and got["global_step"] == ref["global_step"] == 2 * 6
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), name

    three = fsdp_job(tmp_path, KILL_AND_RESUME, nproc=3, mode="reshard")
    assert succeeded(three), three.stderr[-3000:]
    assert "was written by 2 ranks and this run has 3" in (out / "cut" / "notes.txt").read_text()
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(cut / "last.dcp", tmp_path / "saved.pt")  # the 2 ranks' shards, read in one process
    saved = torch.load(tmp_path / "saved.pt", weights_only=False)
    loaded = torch.load(out / "resharded.pt", weights_only=False)
    for name, tensor in saved["model"].items():
        assert torch.equal(loaded["model"][name], tensor), name
    assert saved["optimizer"]["state"].keys() == loaded["optimizer"]["state"].keys()
    for name, state in saved["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(loaded["optimizer"]["state"][name][key], state[key]), (name, key)


def test_fsdp_units_default_to_modules_of_over_a_million_parameters_and_by_class_name():
    big = nn.Sequential(
        nn.Embedding(2000, 600),  # 1.2 M: a unit
        nn.Sequential(nn.Linear(600, 600), nn.Linear(600, 600)),  # 0.36 M each, 0.72 M together: not one
        nn.ModuleList([nn.Linear(1000, 1000), nn.Linear(1000, 1000)]),  # a unit each; the list has no forward
        nn.Sequential(nn.Linear(1100, 1100)),  # the Linear (1.21 M) is the unit, not the Sequential around it
    )
    assert default_units(big) == [big[0], big[2][0], big[2][1], big[3][0]]
    tied = nn.Sequential(nn.Embedding(2000, 600), nn.Linear(600, 2000))
    tied[1].weight = tied[0].weight  # tied embeddings stay with the root
    assert default_units(tied) == []
    net = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16), nn.Linear(8, 2))
    assert (
        named_units(net, ["TransformerEncoderLayer"])
        == named_units(net, [nn.TransformerEncoderLayer])
        == [net[0]]
    )
    with pytest.raises(ConfigError, match="shard names 'TransformerEncoder', which is no module class of the model; "
                       "did you mean 'TransformerEncoderLayer'"):  # fmt: skip
        named_units(net, ["TransformerEncoder"])


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"strategy": "fsdp"},
            "strategy='fsdp' shards the model over the processes torchrun starts, and this is one",
        ),
        ({"strategy": "zero"}, "strategy must be 'ddp' or 'fsdp', not 'zero'"),
        ({"shard": ["Linear"]}, "shard and cpu_offload are options of strategy='fsdp'"),
        ({"cpu_offload": True}, "shard and cpu_offload are options of strategy='fsdp'"),
    ],
)
def test_fsdp_options_that_cannot_apply_are_one_line_errors(tmp_path, options, message):
    m = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8).long()), batch_size=4)
    with pytest.raises(ConfigError, match=message):
        F.train(tmp_path / "run", loader, m, torch.optim.SGD(m.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
                quiet=True, **options)  # fmt: skip
    assert not (tmp_path / "run").exists(), "refused before anything is written"


def test_xt_run_takes_the_fsdp_options_into_its_configuration(tmp_path):
    base = ["run", "--model", "mlp", "--data", "synthetic-classification", "--epochs", "1"]
    out = xt(
        *base, "--strategy", "fsdp", "--shard", "Linear", "--cpu-offload", "--print-config", cwd=tmp_path
    )
    config = json.loads(out.stdout)
    assert (config["strategy"], config["shard"], config["cpu_offload"]) == ("fsdp", ["Linear"], True)
    refused = xt(*base, "--strategy", "fsdp", "-q", "--save-dir", "run", cwd=tmp_path, code=2)
    assert refused.stderr.startswith(
        "xt: error: strategy='fsdp' shards the model over the processes torchrun"
    )
