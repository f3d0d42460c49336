"""``F.train``, ``F.test``, ``F.predict`` and ``F.lr_find``: the seed's functional API, over the engine's modules.

Usage::

    from xt_training import metrics
    from xt_training.utils import functional as F

    history = F.train('runs/exp1', train_loader, model, optimizer, epochs=10, loss_fn=loss_fn,
                      val_loader=val_loader, eval_metrics={'acc': metrics.Accuracy()})
    results = F.test({'test': test_loader}, model, loss_fn, eval_metrics={'acc': metrics.Accuracy()},
                     checkpoint_path='runs/exp1')

    result = F.lr_find(train_loader, model, optimizer, loss_fn, save_dir='runs/lr')  # result.suggestion

The code is in :mod:`xt_training.training`, :mod:`xt_training.testing`, :mod:`xt_training.predict` and
:mod:`xt_training.lr_find`.
"""

from __future__ import annotations

from ..lr_find import lr_find
from ..predict import predict
from ..testing import test
from ..training import train

__all__ = ["train", "test", "predict", "lr_find"]
