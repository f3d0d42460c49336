"""The ``xt`` command line for daily use, as a user meets it: the real console script in a subprocess.

``xt run --print-config`` and ``--dry-run``, shell completion, ``xt env``, ``xt show``/``xt runs``,
``xt info``'s option descriptions, and the order of what a run prints.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ENV, xt

TINY = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200"]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- xt run --print-config / --dry-run ---------------------------------------------------------------------
def test_print_config_prints_every_default_and_is_a_config_to_run_from(tmp_path):
    out = xt("run", *TINY, "--optimizer", "sgd", "--print-config", cwd=tmp_path)
    config = json.loads(out.stdout)
    assert (config["epochs"], config["seed"], config["precision"]) == (10, 0, "32")
    # the factories' defaults, and what the data tells the model, filled in
    assert config["optimizer"]["resolved"]["momentum"] == 0
    model = config["model"]["resolved"]
    assert (model["in_features"], model["num_classes"]) == (20, 3)
    assert config["loss"]["name"] == "cross-entropy" and "accuracy" in config["metrics"]
    assert files_under(tmp_path) == []  # nothing written, no run directory
    (tmp_path / "exp.json").write_text(out.stdout)
    again = xt("run", "--config", "exp.json", "--print-config", cwd=tmp_path)
    assert json.loads(again.stdout) == config


def test_dry_run_trains_one_batch_of_each_pass_and_writes_nothing(tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    # the temporary run directory is gone afterwards too (torch keeps its compiler cache elsewhere)
    env = {**ENV, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torch-cache")}
    args = [*TINY, "--logger", "csv", "--callback", "early-stopping", "--dry-run"]
    out = xt("run", *args, cwd=work, env=env)
    assert files_under(work) == [] and files_under(tmp) == []
    lines = out.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("epoch 1/1"))) + 1 :]
    assert [line.split()[0] for line in table[1:4]] == ["train", "val", "test"]
    assert "nothing written" in lines[-1]
    # a mistake shows in the dry run as in the real one
    bad = xt("run", *TINY, "--monitor", "val/acc", "--dry-run", cwd=work, env=env, code=2)
    assert "monitor 'val/acc' is not a value of this run" in bad.stderr
    assert files_under(work) == [] and files_under(tmp) == []
