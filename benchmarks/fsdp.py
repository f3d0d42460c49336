"""FSDP against DDP on 2 ranks: memory per rank, speed, loss, and checkpoint times: ``python benchmarks/fsdp.py``.

Usage::

    python benchmarks/fsdp.py                       # a 52 M-parameter transformer with Adam; writes its
                                                    # section of benchmarks/RESULTS.md
    python benchmarks/fsdp.py --quick --output /tmp/r.md   # a tiny model, 3 steps: checks that it runs

Each case (``ddp``, ``fsdp``) is a torchrun job of this script (``--case NAME``) with 2 CPU processes (gloo),
one thread each: ``F.train(..., strategy=NAME)`` on the same model, data and Adam, the same global batches
(unshuffled). A callback reads, before every optimizer step, the bytes of this rank's parameters, gradients
and optimizer state (a DTensor's: its local shard) and keeps the largest; the steps per second are timed
between the first and the last step's end (the first step, with Adam's lazily made state, left out). Once
trained, each case times its checkpoint: under DDP rank 0's ``torch.save`` of the model and optimizer state
(``save_checkpoint``) and its load; under FSDP the sharded DCP save of every rank (``fsdp.save_sharded``),
its load, and gathering the whole weights onto rank 0 with their ``torch.save`` (the ``last.pt`` a sharded
run also writes). Rank 0 prints ``BENCH_RESULT {json}`` with every rank's numbers, as ``cases.py`` does.
This is not part of ``run.py`` (minutes, not seconds); ``run.py`` keeps this script's section of
``RESULTS.md`` when it rewrites the file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTION = "## Sharded training: FSDP against DDP"  # its section of RESULTS.md (run.py keeps it)
TARGET = 0.55  # FSDP's bytes of parameters + gradients + optimizer state per rank, as a share of DDP's
SIZES = {  # width, feed-forward width, blocks, vocabulary, sequence length, batch per rank, steps
    "full": (1024, 4096, 4, 1000, 32, 4, 12),
    "quick": (64, 128, 2, 100, 8, 2, 3),
}


def build(size: str) -> tuple[Any, Any, Any]:
    """The model (embedding, transformer blocks, head), Adam and the training loader, seeded."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    width, ff, blocks, vocab, seq, batch, steps = SIZES[size]

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.blocks = nn.Sequential(
                *[nn.TransformerEncoderLayer(width, 16 if width >= 256 else 4, ff, 0.0, batch_first=True)
                  for _ in range(blocks)]
            )  # fmt: skip
            self.head = nn.Linear(width, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.embed(x))).transpose(1, 2)  # (batch, vocab, tokens)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (2 * batch * steps, seq + 1), generator=g)
    loader = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=batch)
    torch.manual_seed(0)
    model = LM()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), loader


class Probe:
    """Before every optimizer step: this rank's bytes of parameters, gradients and optimizer state; step times."""

    def __init__(self) -> None:
        self.peak, self.ends = 0, []

    def on_before_optimizer_step(self, run: Any, optimizer: Any) -> None:
        import torch

        def size(t: Any) -> int:
            t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard
            return t.numel() * t.element_size()

        params = [p for group in optimizer.param_groups for p in group["params"]]
        total = sum(size(p) + (size(p.grad) if p.grad is not None else 0) for p in params)
        total += sum(
            size(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        )
        self.peak = max(self.peak, total)

    def on_train_batch_end(self, run: Any, batch: Any, step: int, y_pred: Any, loss: Any) -> None:
        self.ends.append(time.perf_counter())


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case(name: str, size: str, workdir: Path) -> None:
    """One rank of a case (run by torchrun); rank 0 prints the result of all ranks."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from xt_training import checkpoint
    from xt_training.utils import functional as F

    torch.set_num_threads(1)
    model, optimizer, loader = build(size)
    probe = Probe()
    shard = {"shard": [nn.TransformerEncoderLayer]} if name == "fsdp" else {}
    history = F.train(workdir / "run", loader, model, optimizer, 1, nn.CrossEntropyLoss(), strategy=name,
                      callbacks=[probe], quiet=True, **shard)  # fmt: skip
    times: dict[str, float] = {}

    def timed(key: str, fn: Any, *args: Any) -> Any:
        dist.barrier()
        start = time.perf_counter()
        out = fn(*args)
        dist.barrier()
        times[key] = time.perf_counter() - start
        return out

    rank = dist.get_rank()
    if name == "fsdp":
        from xt_training import fsdp

        timed("save_s", fsdp.save_sharded, workdir / "bench.dcp", model, optimizer, {})
        timed("load_s", fsdp.load_sharded, workdir / "bench.dcp", model, optimizer)

        def consolidate() -> None:
            weights = fsdp.full_model_state(model)
            if rank == 0:
                checkpoint.write_checkpoint(workdir / "bench.pt", {"model": weights})

        timed("consolidate_s", consolidate)
    else:
        path = workdir / "bench.pt"
        timed("save_s", lambda: rank or checkpoint.save_checkpoint(path, model, optimizer))
        timed("load_s", lambda: checkpoint.load_checkpoint(path, model, optimizer))
    current, peak = rss_mb()
    steps = len(probe.ends)
    mine = {
        "state_bytes": probe.peak,
        "rss_mb": current,
        "peak_rss_mb": peak,
        "steps_per_s": (steps - 1) / (probe.ends[-1] - probe.ends[0]),
        **times,
    }
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        parameters = sum(p.numel() for p in model.parameters())
        result = {"case": name, "parameters": parameters, "steps": steps, "loss": history[-1]["train/loss"]}
        print("BENCH_RESULT " + json.dumps({**result, "ranks": ranks}), flush=True)


def run(name: str, size: str, workdir: Path) -> dict[str, Any]:
    """A case as 2 processes of torchrun; its result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--case", name, "--size", size, "--workdir", str(workdir / name)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    raise SystemExit(f"case {name} failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")


def table(results: dict[str, dict[str, Any]], size: str, argv: list[str]) -> str:
    """The section of RESULTS.md."""
    sys.path.insert(0, str(HERE))
    from run import cpu_model, git_commit, load_average, versions  # the header's facts, as run.py gives them

    ddp, fsdp = results["ddp"], results["fsdp"]
    width, ff, blocks, _, seq, batch, _ = SIZES[size]
    share = max(r["state_bytes"] for r in fsdp["ranks"]) / max(r["state_bytes"] for r in ddp["ranks"])
    lines = [
        SECTION,
        "",
        f"- {time.strftime('%Y-%m-%d')}; commit {git_commit()}; {cpu_model()}, {os.cpu_count()} cores, load "
        f"average (1 min) {load_average()} at the end; {versions()}",
        f"- Reproduce: `{shlex.join(['python', 'benchmarks/fsdp.py', *argv])}`",
        f"- Work: a transformer of {ddp['parameters'] / 1e6:.1f} M parameters (embedding, {blocks} "
        f"`nn.TransformerEncoderLayer({width}, ff {ff})` blocks, head), Adam, next-token cross-entropy on random "
        f"tokens, {ddp['steps']} steps of the same global batches ({batch} sequences of {seq} tokens per rank), "
        "2 CPU processes (gloo) of one thread; FSDP shards each block, then the root.",
        "",
        "| strategy | params + grads + Adam state per rank, MiB (max over ranks) | RSS after / peak, MiB (rank 0) "
        "| steps/s | final loss | checkpoint save s | load s | whole weights to rank 0's last.pt s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ranks = r["ranks"]
        lines.append(
            f"| {name} | {max(x['state_bytes'] for x in ranks) / 2**20:.1f} | "
            f"{ranks[0]['rss_mb']:.0f} / {ranks[0]['peak_rss_mb']:.0f} | {ranks[0]['steps_per_s']:.3f} | "
            f"{r['loss']:.6f} | {ranks[0]['save_s']:.2f} | {ranks[0]['load_s']:.2f} | "
            + (f"{ranks[0]['consolidate_s']:.2f} |" if "consolidate_s" in ranks[0] else " |")
        )
    verdict = "met" if share <= TARGET else "**NOT MET**"
    lines += [
        "",
        f"FSDP holds {share:.3f}x DDP's parameters + gradients + optimizer state per rank (target <= {TARGET}: "
        f"{verdict}).",
        "",
        "- The bytes are read before every optimizer step (gradients and the optimizer state alive), the largest "
        "kept; under FSDP a DTensor's local shard. Not in them: DDP's gradient buckets (another copy of the "
        "gradients), FSDP's gathered blocks while they compute, activations.",
        "- RSS: the whole process, the interpreter and torch's libraries included (~0.75 GiB with `--quick`'s "
        "tiny model). Its peak includes the whole model that each rank "
        "builds before `fully_shard` shards it (F.train receives a built model; build on the `meta` device to "
        "avoid that).",
        "- Checkpoint: DDP is rank 0's `torch.save` of the model and Adam state (`save_checkpoint`, fsync'ed) and "
        "`load_checkpoint`; FSDP is every rank's DCP save of its shards (`fsdp.save_sharded`: shards, a barrier, "
        "the atomic switch of the link) and `fsdp.load_sharded`; the last column is what a sharded checkpoint "
        "adds for the one-process tools (`get_model_state_dict(full_state_dict=True, cpu_offload=True)` and "
        "rank 0's `torch.save` of the weights, without the optimizer state).",
        "- Steps/s are rank 0's, between the first and the last step's end; on a machine whose load average is "
        "above its core count they mean little.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Put ``text`` into ``path`` in place of its old section (at the end where it had none)."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text if old else text)
        return
    end = old.find("\n## ", start + len(SECTION))
    path.write_text(old[:start] + text + (old[end + 1 :] if end >= 0 else ""))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model and 3 steps: checks that it runs")
    p.add_argument("--output", type=Path, help="markdown file (default benchmarks/RESULTS.md; --quick: none)")
    p.add_argument("--case", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)  # one rank of a case
    p.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        case(args.case, args.size, args.workdir)
        return
    size = "quick" if args.quick else "full"
    output = args.output or (None if args.quick else HERE / "RESULTS.md")
    with tempfile.TemporaryDirectory(prefix="xt-fsdp-bench-") as tmp:
        results = {}
        for name in ("ddp", "fsdp"):
            print(f"{name}: training on 2 processes ...", flush=True)
            results[name] = run(name, size, Path(tmp))
    text = table(results, size, argv)
    print("\n" + text)
    if output is not None:
        write_section(output, text)
        print(f"written to {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
