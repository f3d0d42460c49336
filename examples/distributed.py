"""Multi-process training (DDP): an ordinary ``F.train`` script, started by torchrun.

Nothing in the training code knows about processes. Under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) the loop joins the process group (gloo on CPUs, NCCL on GPUs), wraps the
model in ``DistributedDataParallel``, gives each rank its share of every loader, synchronises the metrics
at the end of each pass, and lets only rank 0 print and write the run directory::

    torchrun --standalone --nproc-per-node 2 examples/distributed.py --save-dir runs/ddp
    python examples/distributed.py --nproc 2 --save-dir runs/ddp     # the same; this script calls torchrun
    xt run --nproc 2 --model mlp --data synthetic-classification     # by name: the CLI does the same

Each rank trains on its half of every shuffled epoch with the loader's batch size, so the global batch is
``nproc`` times ``--batch-size``. On several machines, start the same command on each with
``torchrun --nnodes N --node-rank I --master-addr HOST --master-port PORT --nproc-per-node G``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.utils import functional as F


def main(
    save_dir: str, *, n_samples: int = 4000, epochs: int = 3, batch_size: int = 32, quiet: bool = False
) -> Any:
    g = torch.Generator().manual_seed(0)  # every rank builds the same data set; the loop shards it
    x = torch.randn(n_samples, 16, generator=g)
    y = (x @ torch.randn(16, 3, generator=g)).argmax(1)
    n_train = int(0.8 * n_samples)
    train_loader = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256)

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return F.train(
        save_dir,
        train_loader,
        model,
        optimizer,
        epochs,
        nn.CrossEntropyLoss(),
        val_loader=val_loader,
        eval_metrics={"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()},
        quiet=quiet,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/ddp")
    parser.add_argument("--n-samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--nproc", type=int, default=1, help="start this many processes with torchrun")
    args = parser.parse_args()
    if args.nproc > 1 and "RANK" not in os.environ:
        # torchrun's own entry point, as `xt run --nproc` uses it; each process runs this script without --nproc
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
        ]
        argv = [f"--save-dir={args.save_dir}", f"--n-samples={args.n_samples}", f"--epochs={args.epochs}",
                f"--batch-size={args.batch_size}"]  # fmt: skip
        sys.exit(subprocess.call([*launch, __file__, *argv]))
    torch.set_num_threads(1)  # processes share the machine's cores
    history = main(args.save_dir, n_samples=args.n_samples, epochs=args.epochs, batch_size=args.batch_size)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"world size {os.environ.get('WORLD_SIZE', '1')}: validation accuracy {history[-1]['val/acc']:.3f}"
        )
