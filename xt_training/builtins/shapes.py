"""Built-in problem shapes beyond classification: data, models, metrics and losses (plugin module).

Every name registered here says its problem shape in the metadata ``task`` (``xt info data
synthetic-segmentation`` shows it): regression, multilabel, segmentation, detection, text or tagging.
Detection models come from the xt-vision plugin (``fasterrcnn-mobilenet``).
"""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

_DATA = "xt_training.builtins.shape_data"
_NETS = "xt_training.builtins.shape_nets"


@hookimpl
def register_data(register: Any) -> None:
    register(
        "synthetic-regression",
        f"{_DATA}:synthetic_regression",
        description="tabular regression: targets = random linear map of the features + noise (seeded)",
        task="regression",
    )
    register(
        "synthetic-multilabel",
        f"{_DATA}:synthetic_multilabel",
        description="tabular multi-label rows: float 0/1 targets, any number of labels on (seeded)",
        task="multilabel",
    )
    register(
        "synthetic-segmentation",
        f"{_DATA}:synthetic_segmentation",
        description="images of drawn rectangles and disks with per-pixel class masks (seeded)",
        task="segmentation",
    )
    register(
        "synthetic-detection",
        "xt_training.builtins.detection:synthetic_detection",
        description="images of coloured rectangles with their boxes and labels, torchvision's format (seeded)",
        task="detection",
    )
    register(
        "synthetic-text",
        "xt_training.builtins.text:synthetic_text",
        description="generated sentences labelled by topic; a word tokenizer built from the training split",
        task="text",
    )
    register(
        "synthetic-tagging",
        f"{_DATA}:synthetic_tagging",
        description="token sequences of varying length with one tag per token, padded (seeded)",
        task="tagging",
    )


@hookimpl
def register_models(register: Any) -> None:
    register("unet", f"{_NETS}:UNet", description="small U-Net: per-pixel class logits", task="segmentation")
    register(
        "text-gru",
        f"{_NETS}:TextClassifier",
        description="embedding + GRU text classifier: model(input_ids, attention_mask)",
        task="text",
    )
    register(
        "rnn-tagger",
        f"{_NETS}:SequenceTagger",
        description="embedding + GRU tagger: per-step logits flattened to (N*T, C), as the seed's RNNModel",
        task="tagging",
    )


@hookimpl
def register_metrics(register: Any) -> None:
    metrics = "xt_training.metrics"
    register(
        "mse", f"{metrics}:MSE", description="mean squared error (squared=False: RMSE)", task="regression"
    )
    register("mae", f"{metrics}:MAE", description="mean absolute error", task="regression")
    register("r2", f"{metrics}:R2", description="coefficient of determination R2", task="regression")
    register(
        "iou",
        f"{metrics}:IoU",
        description="intersection over union per class over all pixels of the epoch (mean IoU)",
        task="segmentation",
    )
    register(
        "dice",
        f"{metrics}:Dice",
        description="Dice coefficient per class over all pixels of the epoch, averaged",
        task="segmentation",
    )
    register(
        "map",
        f"{metrics}:MeanAveragePrecision",
        description="COCO mean average precision of detected boxes (needs pycocotools)",
        task="detection",
    )


@hookimpl
def register_losses(register: Any) -> None:
    register(
        "detection",
        "xt_training.builtins.detection:DetectionLoss",
        description="sum of the loss dict a detection model returns in training mode",
        task="detection",
    )
