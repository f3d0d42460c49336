"""SLURM: tasks started by ``srun`` without torchrun, and a job that requeues itself before its time limit.

As Lightning's ``SLURMEnvironment`` does, a process is a task of a SLURM job when ``SLURM_NTASKS`` is set
and the job is not named ``bash`` or ``interactive`` (an interactive allocation: name it so to start the
processes another way, with torchrun say). Its rank, world size and local rank are then ``SLURM_PROCID``,
``SLURM_NTASKS`` and ``SLURM_LOCALID``; rank 0 listens on the first host of ``SLURM_JOB_NODELIST``, at
``MASTER_PORT`` when that is set, else at 15000 plus the last four digits of ``SLURM_JOB_ID`` (which every
task of the job works out alike, unasked). torchrun's own variables, where set, win.

``sbatch --signal=USR1@90`` asks SLURM to send SIGUSR1 to every task 90 s before the time limit; the loop
then saves ``checkpoints/last.pt`` where it is, rank 0 runs ``scontrol requeue JOB_ID``, and the tasks
exit. When SLURM starts the job again it sets ``SLURM_RESTART_COUNT`` (also after a node failure, with
``--requeue``), and the same command continues the run in its directory exactly where it stopped: training
resumes whenever the count is 1 or more and the run directory holds a run. (Lightning resumes from its
``hpc_ckpt_N.ckpt`` whenever one is in the directory; here ``last.pt`` is always there, so SLURM's count
decides.) Torch-free.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping

from .errors import ConfigError

#: the signal that asks to save, requeue and exit (``#SBATCH --signal=USR1@90``)
REQUEUE_SIGNAL = signal.SIGUSR1
INTERACTIVE = ("bash", "interactive")  # job names of an allocation whose processes are not srun's tasks


def job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol`` knows this job by (``ARRAYJOB_TASK`` for an array task); None outside a batch job."""
    if "SLURM_JOB_ID" not in environ or environ.get("SLURM_JOB_NAME") in INTERACTIVE:
        return None
    if "SLURM_ARRAY_JOB_ID" in environ and "SLURM_ARRAY_TASK_ID" in environ:
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def torchrun_variables(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` of an
    ``srun`` task, from SLURM's; none for one task, outside SLURM, or where torchrun set its own."""
    if "RANK" in environ or "SLURM_NTASKS" not in environ or environ.get("SLURM_JOB_NAME") in INTERACTIVE:
        return {}
    world = _whole(environ, "SLURM_NTASKS", None)
    if world <= 1:
        return {}
    rank = _whole(environ, "SLURM_PROCID", world - 1)
    nodes = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "127.0.0.1"
    digits = environ.get("SLURM_JOB_ID", "")[-4:]
    port = environ.get("MASTER_PORT") or str(15000 + int(digits) if digits.isdigit() else 12910)
    variables = {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": first_host(nodes)}
    variables.update(LOCAL_RANK=str(_whole(environ, "SLURM_LOCALID", world - 1)), MASTER_PORT=port)
    if environ.get("SLURM_NTASKS_PER_NODE", "").isdigit():  # e.g. "2(x3)" says a different number per node
        variables["LOCAL_WORLD_SIZE"] = environ["SLURM_NTASKS_PER_NODE"]
    return variables


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: ``node[01-04,07],gpu5`` -> ``node01``,
    ``rack[1-2]-n[3,5]`` -> ``rack1-n3``, ``a,b`` and ``a b`` -> ``a``."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0 and char in ", ":
            end = i
            break
    # each bracket's first item, the start of its first range: [01-04,07] -> 01
    return re.sub(r"\[([^],-]*)[^]]*\]", r"\1", nodelist[:end])


def restarted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether SLURM started this job again (requeued: by :func:`requeue`, or after a node failure)."""
    return job_id(environ) is not None and _whole(environ, "SLURM_RESTART_COUNT", None, default=0) > 0


def requeue() -> str:
    """Run ``scontrol requeue JOB_ID``; what happened, in words that end a sentence."""
    job = job_id()
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`scontrol requeue {job}` could not run ({e}); resubmit the job to resume"
    if done.returncode:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return f"`scontrol requeue {job}` failed ({why[0]}); resubmit the job to resume"
    return f"SLURM job {job} requeued: it resumes when it starts again"


def _whole(environ: Mapping[str, str], name: str, high: int | None, default: int | None = None) -> int:
    """The whole number from 0 to ``high`` in SLURM's variable ``name``."""
    raw = environ.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not raw.isdigit() or (high is not None and int(raw) > high):
        bound = "" if high is None else f" up to {high}"
        raise ConfigError(
            f"SLURM variable {name}={raw!r} must be a whole number{bound}; srun sets it for each task it "
            "starts: unset it to run outside SLURM"
        )
    return int(raw)
