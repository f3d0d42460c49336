"""xt-training's metrics import the parts of torchmetrics they use, not the optional packages of its __init__;
torchmetrics imported afterwards by anyone else is whole and the same (xt_training/torchmetrics_parts.py).

Each check runs in a fresh interpreter: what a process has imported is the subject.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torchvision", "transformers", "scipy.signal"]  # what torchmetrics' __init__ imports where installed


def run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def heavy_packages_installed():
    import importlib.util

    missing = [p for p in HEAVY if importlib.util.find_spec(p.split(".")[0]) is None]
    if missing:  # (the dev extra installs them all) without them there is nothing to leave out
        pytest.skip(f"{', '.join(missing)} not installed")


def test_a_metric_imports_none_of_the_optional_packages_and_computes_what_torchmetrics_does():
    out = run(f"""
        import json, sys, torch
        from xt_training import metrics
        acc, r2 = metrics.Accuracy(), metrics.R2()
        y_pred, y = torch.tensor([[2.0, 1, 0], [0, 3, 1], [0, 1, 2], [1, 0, 0]]), torch.tensor([0, 2, 2, 0])
        acc.update(y_pred, y)
        r2.update(torch.tensor([1.0, 2, 3.5]), torch.tensor([1.0, 2, 3]))
        loaded = [m for m in {HEAVY} if m in sys.modules]
        values = [acc.compute().item(), r2.compute().item()]
        import torchmetrics  # the whole package now, as a user's code imports it
        from torchmetrics.classification import MulticlassAccuracy
        from torchmetrics.functional import r2_score
        reference = [MulticlassAccuracy(num_classes=3, average="micro")(y_pred, y).item(),
                     r2_score(torch.tensor([1.0, 2, 3.5]), torch.tensor([1.0, 2, 3])).item()]
        print(json.dumps({{"loaded": loaded, "values": values, "reference": reference,
                          "after": [m for m in {HEAVY} if m in sys.modules]}}))
    """)
    assert out["loaded"] == [], f"a metric imported {out['loaded']}"
    assert out["values"] == out["reference"]
    assert out["after"] == HEAVY  # the whole torchmetrics imports them, as it does on its own


def test_torchmetrics_imported_afterwards_is_whole_and_its_classes_are_the_same_objects():
    out = run("""
        import json, logging, sys
        from xt_training.torchmetrics_parts import import_part
        tmc = import_part("torchmetrics.classification")
        reg = import_part("torchmetrics.regression")
        import torchmetrics
        import torchmetrics.retrieval  # a part not imported before, whose modules need the whole package
        from torchmetrics.text import BLEUScore
        from torchmetrics.image.arniqa import ARNIQA
        import torchmetrics.functional.classification as fc
        print(json.dumps({
            "same": [torchmetrics.classification is tmc, torchmetrics.regression is reg,
                     torchmetrics.Accuracy is tmc.Accuracy, torchmetrics.functional.classification is fc,
                     issubclass(BLEUScore, torchmetrics.Metric)],
            "version": torchmetrics.__version__,
            "torchvision_bound": hasattr(sys.modules["torchmetrics.functional.image.arniqa"], "resnet50"),
            "handlers": len(logging.getLogger("torchmetrics").handlers),
            "finders": [type(f).__name__ for f in sys.meta_path if type(f).__module__.startswith("xt_training")],
        }))
    """)
    assert out["same"] == [True] * 5
    assert out["version"]
    assert out["torchvision_bound"]  # the image metrics that need torchvision have it, as without xt
    assert out["handlers"] == 1  # torchmetrics' own logging handler, once
    assert out["finders"] == []  # nothing of xt-training stays in the import system


def test_torchmetrics_imported_first_is_used_as_it_is():
    out = run("""
        import json, sys
        import torchmetrics
        from xt_training.torchmetrics_parts import import_part
        print(json.dumps({"same": import_part("torchmetrics.classification") is torchmetrics.classification}))
    """)
    assert out["same"]


def test_a_torchmetrics_that_does_not_import_in_parts_is_imported_the_usual_way():
    # as if a torchmetrics release needed its package's __init__ before torchmetrics.utilities
    out = run("""
        import json, sys

        class Refuse:  # the first import of torchmetrics.utilities fails
            def find_spec(self, name, path=None, target=None):
                if name == "torchmetrics.utilities":
                    sys.meta_path.remove(self)
                    raise ImportError("needs the package first")

        sys.meta_path.insert(0, Refuse())
        from xt_training.torchmetrics_parts import import_part
        tmc = import_part("torchmetrics.classification")
        import torchmetrics
        print(json.dumps({"whole": hasattr(sys.modules["torchmetrics"], "Accuracy"),
                          "same": torchmetrics.classification is tmc}))
    """)
    assert out == {"whole": True, "same": True}
