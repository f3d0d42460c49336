"""A Python config file for ``xt train``: the original xt-training's way to describe a run.

    xt train examples/config_train.py --save-dir runs/config
    xt test examples/config_train.py --checkpoint runs/config/checkpoints/best.pt

``xt train`` runs this file as Python code (only run config files you trust) and passes every global
name that is an argument of ``F.train`` to it: ``model``, ``train_loader``, ``optimizer``, ``loss_fn`` and
``epochs`` are required; ``val_loader``, ``test_loaders``, ``eval_metrics``, ``scheduler``, ``monitor``,
``callbacks``, ... are optional. ``xt test`` uses ``model``, ``test_loaders``, ``loss_fn`` and
``eval_metrics``. A copy of the file is kept in the run directory as ``config.py``.

The size comes from the environment, since a config file takes no command-line options:
``N_SAMPLES=600 EPOCHS=2 xt train examples/config_train.py``.
"""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.callbacks import EarlyStopping

N_SAMPLES = int(os.environ.get("N_SAMPLES", "3000"))

# Data: rows of 20 features in 4 classes, the label an argmax of a fixed random projection. The projection
# is drawn first, so it is the same whatever N_SAMPLES is: a model trained at one size tests at another.
g = torch.Generator().manual_seed(0)
projection = torch.randn(20, 4, generator=g)
x = torch.randn(N_SAMPLES, 20, generator=g)
y = (x @ projection).argmax(1)
n_train, n_val = int(0.7 * N_SAMPLES), int(0.15 * N_SAMPLES)
train_loader = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=64, shuffle=True)
val_loader = DataLoader(
    TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val]), batch_size=256
)
test_loaders = {"test": DataLoader(TensorDataset(x[n_train + n_val :], y[n_train + n_val :]), batch_size=256)}

# Model, loss, optimizer and scheduler: plain PyTorch.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 4))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
epochs = int(os.environ.get("EPOCHS", "10"))
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

eval_metrics = {"acc": metrics.Accuracy(), "f1": metrics.F1(), "auc": metrics.ROC_AUC()}
monitor = "val/acc"  # best.pt is the epoch with the highest validation accuracy
callbacks = [EarlyStopping(patience=3)]  # stop when val/acc has not improved for 3 epochs
