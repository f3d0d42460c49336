"""DDP on CPU (gloo) through torchrun: synced metrics, rank-0 I/O, failing ranks."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest
import torch
from conftest import ENV, XT, finish, make_classification
from test_registry import write_image_folder
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import load_checkpoint, metrics
from xt_training.utils import functional as F

COMMON = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from xt_training import metrics
    from xt_training.utils import functional as F

    torch.set_num_threads(1)
    out = sys.argv[1]

    def data(n=301, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 16, generator=g)
        w = torch.randn(16, 3, generator=g)
        return x, (x @ w).argmax(1)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))

    def eval_metrics():
        return {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "f1": metrics.F1(),
                "mae": lambda p, y: (p.argmax(1) - y).abs().float().mean()}
    """
)


def torchrun(tmp_path, body, nproc=2, timeout=180):
    script = tmp_path / "job.py"
    script.write_text(COMMON + textwrap.dedent(body))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", str(script), str(tmp_path / "out")]  # fmt: skip
    # each rank's output reaches the pipe whole: distributed.shutdown() flushes it before any teardown abort
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def succeeded(result):
    """Exit 0; or, rarely, gloo aborting a rank in the interpreter's teardown after the work was done
    (a torch/gloo race: `xt run` avoids it by leaving with os._exit, plain scripts may meet it)."""
    return result.returncode == 0 or "terminate called without an active exception" in result.stderr


def reference_data(n=301, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    w = torch.randn(16, 3, generator=g)
    return x, (x @ w).argmax(1)


def reference_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


def test_two_processes_report_the_metrics_of_one(tmp_path):
    result = torchrun(
        tmp_path,
        """
        x, y = data()
        loader = DataLoader(TensorDataset(x, y), batch_size=20)  # 301 examples: uneven shards
        res = F.test({"test": loader}, model(), nn.CrossEntropyLoss(), eval_metrics(), quiet=True)
        json.dump(res, open(f"{out}.{os.environ['RANK']}.json", "w"))
        """,
    )
    assert succeeded(result), result.stderr[-3000:]
    x, y = reference_data()
    expected = F.test({"test": DataLoader(TensorDataset(x, y), batch_size=20)}, reference_model(),
                      nn.CrossEntropyLoss(), {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "f1": metrics.F1(),
                      "mae": lambda p, y: (p.argmax(1) - y).abs().float().mean()}, quiet=True)["test"]  # fmt: skip
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}.json").read_text())["test"]
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-5), k


def test_ddp_training_converges_and_writes_one_run_directory(tmp_path):
    result = torchrun(
        tmp_path,
        """
        x, y = data(1200)
        train = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=16, shuffle=True)  # global batch 32
        val = DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=50)
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.2)
        hist = F.train(out, train, m, opt, 4, nn.CrossEntropyLoss(), val_loader=val,
                       eval_metrics={"acc": metrics.Accuracy()}, accumulate_grad_batches=2)
        sys.stdout.write(f"RANK {os.environ['RANK']} ACC {hist[-1]['val/acc']}\\n")  # one write: ranks share the pipe
        """,
    )
    assert succeeded(result), result.stderr[-3000:]
    accs = [float(acc) for acc in re.findall(r"RANK \d ACC ([0-9.]+)", result.stdout)]
    assert len(accs) == 2 and accs[0] == accs[1], "all ranks agree on the synced metrics"

    x, y = reference_data(1200)
    m = reference_model()
    hist = F.train(tmp_path / "single", DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=32, shuffle=True), m,
                   torch.optim.SGD(m.parameters(), lr=0.2), 4, nn.CrossEntropyLoss(),
                   val_loader=DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=50),
                   eval_metrics={"acc": metrics.Accuracy()}, quiet=True)  # fmt: skip
    assert abs(accs[0] - hist[-1]["val/acc"]) < 0.08 and accs[0] > 0.8

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "history.json", "notes.txt", "run.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    # each rank trains on its half: 500 examples in 32 batches of 16, an optimizer step every 2
    assert state["global_step"] == 4 * 16
    assert not any(k.startswith("module.") for k in state["model"])
    plain = reference_model()
    load_checkpoint(out / "checkpoints" / "last.pt", plain)  # strict: every key fits the plain model
    assert json.loads((out / "history.json").read_text())[-1]["val/acc"] == accs[0]
    assert result.stdout.count("val") <= 20, "only rank 0 prints"


def test_a_failing_rank_brings_the_job_down(tmp_path):
    start = time.monotonic()
    result = torchrun(
        tmp_path,
        """
        x, y = data(400)
        train = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
        rank = int(os.environ["RANK"])

        def loss_fn(y_pred, y):
            loss_fn.calls = getattr(loss_fn, "calls", 0) + 1
            if rank == 1 and loss_fn.calls == 5:
                raise RuntimeError("rank 1 failed on purpose")
            return nn.functional.cross_entropy(y_pred, y)

        m = model()
        F.train(out, train, m, torch.optim.SGD(m.parameters(), lr=0.1), 50, loss_fn, quiet=True)
        """,
        timeout=120,
    )
    assert result.returncode != 0
    assert "rank 1 failed on purpose" in result.stderr
    assert time.monotonic() - start < 90


def test_a_callback_that_stops_one_rank_stops_every_rank(tmp_path):
    result = torchrun(
        tmp_path,
        """
        x, y = data(400)
        train = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
        rank = int(os.environ["RANK"])

        class RankZeroBudget:  # e.g. a time budget: the ranks' clocks disagree
            def on_epoch_end(self, run, row):
                run.should_stop = run.should_stop or (rank == 0 and run.epoch == 2)

        m = model()
        hist = F.train(out, train, m, torch.optim.SGD(m.parameters(), lr=0.1), 6, nn.CrossEntropyLoss(),
                       quiet=True, callbacks=[RankZeroBudget()])
        sys.stdout.write(f"RANK {rank} EPOCHS {len(hist)}\\n")  # one write: ranks share the pipe
        """,
        timeout=120,
    )
    assert succeeded(result), result.stderr[-3000:]
    assert sorted(re.findall(r"RANK (\d) EPOCHS (\d+)", result.stdout)) == [("0", "2"), ("1", "2")]


def test_training_loaders_are_sharded_without_changing_a_single_process_run(tmp_path):
    # without torchrun nothing is wrapped: the model stays a plain module
    x, y = make_classification(64)
    m = reference_model()
    F.train(tmp_path, DataLoader(TensorDataset(x, y), batch_size=16), m, torch.optim.SGD(m.parameters(), lr=0.1), 1,
            nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
    assert not any(k.startswith("module.") for k in torch.load(tmp_path / "checkpoints" / "last.pt")["model"])


def test_xt_run_nproc_2_end_to_end(tmp_path):
    xt = Path(sys.executable).with_name("xt")
    run_dir = tmp_path / "run"
    # --monitor=...: torchrun's parser took it for an abbreviation of its --monitor-interval
    result = subprocess.run(
        [str(xt), "run", "--model", "mlp", "--data", "synthetic-classification", "--epochs", "2",
         "--metric", "accuracy", "--nproc", "2", "--monitor=val/accuracy", "--save-dir", str(run_dir)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run completed") == 1, "only rank 0 prints"
    assert json.loads((run_dir / "config.json").read_text())["monitor"] == "val/accuracy"
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])


@pytest.mark.slow
def test_a_bad_distributed_environment_is_one_line_and_a_missing_peer_a_bounded_wait(tmp_path):
    """Each case is the real `xt run` with torchrun's variables set by hand; all run at once."""
    with socket.socket() as s:  # a port where nobody listens
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    alone = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "XT_RENDEZVOUS_TIMEOUT": "2"}
    mlp = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=64"]
    images = [
        "--model",
        "mlp",
        "--data",
        "image-folder",
        "--data-opt",
        f"root={write_image_folder(tmp_path / 'i')}",
    ]
    cases = {  # environment -> (data, what the one line says)
        "rank 1 alone": ({**alone, "RANK": "1"}, mlp, "RANK=1 of WORLD_SIZE=2 could not join the others at "
                         f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port} within XT_RENDEZVOUS_TIMEOUT=2 s"),
        "rank 0 alone": ({**alone, "RANK": "0", "MASTER_PORT": str(int(port) + 1)}, mlp,
                         "RANK=0 of WORLD_SIZE=2 could not join the others"),
        "WORLD_SIZE=abc": ({"WORLD_SIZE": "abc", "RANK": "0"}, mlp,
                           "environment variable WORLD_SIZE='abc' must be a whole number >= 1"),
        "no MASTER_ADDR": ({"WORLD_SIZE": "2", "RANK": "1"}, mlp, "RANK=1 and WORLD_SIZE=2 ask for 2 processes, "
                           "which need MASTER_ADDR and MASTER_PORT (where rank 0 listens) too"),
        "LOCAL_WORLD_SIZE=0": ({"LOCAL_WORLD_SIZE": "0"}, images,
                               "environment variable LOCAL_WORLD_SIZE='0' must be a whole number >= 1"),
    }  # fmt: skip
    start = time.monotonic()
    jobs = {
        name: subprocess.Popen(
            [Path(sys.executable).with_name("xt"), "run", *data, "--epochs", "1", "-q", "--save-dir", name],
            env={**ENV, **environ}, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, (environ, data, _) in cases.items()
    }  # fmt: skip
    try:
        for name, job in jobs.items():
            _, stderr = job.communicate(timeout=120)
            assert job.returncode == 2, (name, stderr[-2000:])
            assert stderr.startswith(f"xt: error: {cases[name][2]}"), (name, stderr)
            assert stderr.count("\n") == 1, (name, stderr)  # torch's C++ log of the failed tries is held back
    finally:
        for job in jobs.values():
            job.kill()
    assert time.monotonic() - start < 60, (
        "the lone ranks waited XT_RENDEZVOUS_TIMEOUT, not torch's 30 minutes"
    )


@pytest.mark.slow
def test_two_machines_through_xt_run_nnodes_write_one_run_directory(tmp_path):
    """Two "machines" on 127.0.0.1, 2 processes each, meet at torchrun's c10d rendezvous: 4 ranks, one run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=1000",
           "--epochs", "2", "--metric", "accuracy", "--save-dir", "run", "--nproc", "2", "--nnodes", "2",
           f"--rdzv-endpoint=127.0.0.1:{port}"]  # fmt: skip
    machines = [
        subprocess.Popen([XT, *run], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = finish(machines)
    assert sum(out.count("run completed") for out, _ in outputs) == 1, "only rank 0 of the 4 prints"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    # 700 training examples over 4 ranks: 175 each, in 3 batches of 64
    assert state["global_step"] == 2 * 3
    # the metrics synced over 4 ranks are those of one process on the same weights
    tested = subprocess.run([XT, "test", "run", "--checkpoint", "last", "--split", "val", "--json"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-3000:]
    one_process = json.loads(tested.stdout)["val"]
    for key in ("loss", "accuracy"):
        assert history[-1][f"val/{key}"] == pytest.approx(one_process[key], rel=1e-6), key


def test_xt_run_nnodes_starts_torchrun_for_several_machines():
    from xt_training.cli import TORCHRUN, _torchrun

    assert _torchrun(1, 1, None, None) == []
    assert _torchrun(4, 1, None, None) == [*TORCHRUN, "--standalone", "--nproc-per-node=4"]
    assert _torchrun(8, 2, "10.0.0.1:29500", None) == [
        *TORCHRUN, "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500"
    ]  # fmt: skip
    assert _torchrun(8, 2, "10.0.0.1:29500", 1) == [
        *TORCHRUN, "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500"
    ]  # fmt: skip
    bad = {
        (2, None, None): "--nnodes 2 needs --rdzv-endpoint HOST:PORT, where the machines meet",
        (2, "10.0.0.1", None): "--rdzv-endpoint '10.0.0.1' must be HOST:PORT, e.g. 10.0.0.1:29500",
        (2, "h:1", 2): "--node-rank 2 must be below --nnodes 2",
        (1, None, 0): "--rdzv-endpoint and --node-rank join machines: add --nnodes N (N > 1)",
    }
    for (nnodes, endpoint, node_rank), message in bad.items():
        with pytest.raises(click.UsageError, match=re.escape(message)):
            _torchrun(2, nnodes, endpoint, node_rank)
