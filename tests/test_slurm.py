"""SLURM without SLURM: tasks started as srun would start them (its variables, no torchrun), a fake scontrol."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest
import torch
from conftest import ENV, XT, finish

from xt_training import slurm
from xt_training.errors import ConfigError


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node[01-04],other", "node01"),
        ("node[07,01-04]", "node07"),
        ("gpu5,node[1-2]", "gpu5"),
        ("host0 host1", "host0"),
        ("rack[1-2]-node[003-004]", "rack1-node003"),
        ("node[5]", "node5"),
        ("single", "single"),
    ],
)
def test_the_first_host_of_a_node_list(nodelist, first):
    assert slurm.first_host(nodelist) == first


def test_torchrun_variables_from_slurm_variables():
    task = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "8", "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-15]", "SLURM_NTASKS_PER_NODE": "2"}  # fmt: skip
    assert slurm.torchrun_variables(task) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                              "MASTER_ADDR": "gpu12", "MASTER_PORT": "18456", "LOCAL_WORLD_SIZE": "2"}  # fmt: skip
    assert slurm.torchrun_variables({**task, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    assert slurm.torchrun_variables({**task, "RANK": "0"}) == {}, "torchrun's own variables win"
    assert slurm.torchrun_variables({**task, "SLURM_JOB_NAME": "interactive"}) == {}
    assert slurm.torchrun_variables({**task, "SLURM_NTASKS": "1"}) == {}
    with pytest.raises(ConfigError, match=r"SLURM variable SLURM_PROCID='8' must be a whole number up to 7"):
        slurm.torchrun_variables({**task, "SLURM_PROCID": "8"})
    assert slurm.job_id({**task, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}) == "77_3"
    assert not slurm.restarted(task) and slurm.restarted({**task, "SLURM_RESTART_COUNT": "1"})


def free_port_for_a_job_id() -> int:
    """A free port that SLURM's rule (15000 + the job id's last 4 digits) can name."""
    while True:
        port = random.randrange(15000, 25000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


RUN = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=3000", "--batch-size",
       "16", "--epochs", "4", "--metric", "accuracy", "--log-every", "5", "--checkpoint-every", "5", "-q"]  # fmt: skip


def srun(tmp_path, job: str, restarts: int = 0) -> list[subprocess.Popen]:
    """The 2 tasks of `srun xt run ...` in job `job`: SLURM's variables only, in the job's own directory."""
    torchruns = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in ENV.items() if k not in torchruns}
    env.update(SLURM_JOB_ID=job, SLURM_JOB_NAME="train", SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.[1-2]",
               PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}")  # fmt: skip
    if restarts:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    (tmp_path / job).mkdir(exist_ok=True)
    return [
        subprocess.Popen([XT, "run", *RUN], cwd=tmp_path / job, env={**env, "SLURM_PROCID": str(i),
                         "SLURM_LOCALID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip


def rank_0_output(tasks: list[subprocess.Popen]) -> str:
    """Wait for the tasks (each must exit 0); rank 0's output."""
    return finish(tasks)[0][0]


@pytest.mark.slow
def test_usr1_saves_requeues_and_the_restarted_job_resumes_exactly(tmp_path):
    (tmp_path / "bin").mkdir()
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    whole = stopped = f"9{free_port_for_a_job_id() - 15000:04d}"  # job ids that name free ports
    while stopped == whole:
        stopped = f"9{free_port_for_a_job_id() - 15000:04d}"
    run_dir = tmp_path / stopped / "runs" / f"mlp-synthetic-classification-slurm{stopped}"
    uninterrupted, tasks = srun(tmp_path, whole), srun(tmp_path, stopped)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists():  # written every 5 steps, once training runs
        if time.monotonic() > deadline or any(t.poll() is not None for t in tasks):
            pytest.fail(f"the tasks ended, or wrote no checkpoint in 120 s: {rank_0_output(tasks)}")
        time.sleep(0.01)
    for task in tasks:  # as SLURM does, 90 s before the time limit: to every task
        task.send_signal(signal.SIGUSR1)
    out = rank_0_output(tasks)
    assert f"stopped by SIGUSR1: state saved to runs/mlp-synthetic-classification-slurm{stopped}" in out
    assert f"SLURM job {stopped} requeued" in out
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {stopped}\n", "rank 0 requeues, once"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] < 4, "SIGUSR1 stopped the run before its end"

    # SLURM starts the requeued job again: the same command, SLURM_RESTART_COUNT=1
    finish(srun(tmp_path, stopped, restarts=1))
    assert "resuming the run" in (run_dir / "notes.txt").read_text()
    finish(uninterrupted)
    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    whole_dir = tmp_path / whole / "runs" / f"mlp-synthetic-classification-slurm{whole}"
    expected = torch.load(whole_dir / "checkpoints" / "last.pt", weights_only=True)
    # 1800 training examples over 2 ranks: 900 each, 57 batches of 16 per epoch
    assert expected["global_step"] == resumed["global_step"] == 4 * 57
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for key, state in expected["optimizer"]["state"].items():
        assert all(torch.equal(resumed["optimizer"]["state"][key][k], v) for k, v in state.items()), key
    # every value of the history, the training metrics of the epoch stopped midway included: each rank went
    # on with its own running sums and metric states (the checkpoint holds every rank's)
    # (no position where it stopped at an epoch's end)
    assert not saved["position"] or len(saved["position"]["ranks"]) == 2
    history, whole_history = (json.loads((d / "history.json").read_text()) for d in (run_dir, whole_dir))
    assert history == whole_history
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {stopped}\n", "no more requeues"


def test_a_requeue_that_fails_says_so(tmp_path, monkeypatch):
    (tmp_path / "scontrol").write_text(
        "#!/bin/sh\necho 'slurm_requeue error: Requested operation is disabled' >&2\nexit 1\n"
    )
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm.requeue() == (
        "`scontrol requeue 42` failed (slurm_requeue error: Requested operation is disabled); resubmit the job to resume"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert slurm.requeue().startswith("`scontrol requeue 42` could not run (")
