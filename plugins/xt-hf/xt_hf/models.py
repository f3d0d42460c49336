"""Hugging Face ``transformers`` models by hub name or local directory, for one task each."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

from xt_training.errors import ConfigError

from .hub import local_or_hub, pretrained

Task = Literal["sequence-classification", "token-classification", "causal-lm"]

#: task -> the transformers Auto class that builds its model
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
}


def hf_model(
    *,
    name: str | None = None,
    task: Task = "sequence-classification",
    num_classes: int | None = None,
    classes: Sequence[Any] | None = None,
    tokenizer: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
) -> Any:
    """``AutoModelFor<task>.from_pretrained(name)``: a hub name or a directory written by ``save_pretrained``.

    Args:
        name: the pretrained model; default: the data's tokenizer (``hf-dataset``'s ``tokenizer=``).
        task: ``sequence-classification``, ``token-classification`` or ``causal-lm``; default: the data's.
        num_classes: the labels of a classification head (the data's); a head of another size, or none, is
            replaced by a new one initialised at random, and said so.
        classes: the label names (the data's), kept in the model's ``config.id2label``.
        tokenizer: the data's tokenizer name, the default of ``name``.
        dtype: the weights' type while training; ``auto``: as saved.
    """
    name = name or tokenizer
    if name is None:
        raise ConfigError(
            "model 'hf' needs the pretrained model: --model-opt name=HUB_NAME_OR_DIRECTORY "
            "(or data hf-dataset's tokenizer=, which it defaults to)"
        )
    if task not in AUTO_CLASSES:
        raise ConfigError(f"model 'hf': unknown task {task!r}; choose one of: {', '.join(AUTO_CLASSES)}")
    import torch
    import transformers

    options: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if task != "causal-lm" and num_classes is not None:
        options.update(num_labels=num_classes, ignore_mismatched_sizes=True)
        if classes is not None and len(classes) == num_classes:
            options["id2label"] = {i: str(c) for i, c in enumerate(classes)}
            options["label2id"] = {str(c): i for i, c in enumerate(classes)}
    auto = getattr(transformers, AUTO_CLASSES[task])
    model, info = pretrained(
        auto.from_pretrained, local_or_hub(name), "config.json", output_loading_info=True, **options
    )
    new = sorted(
        {
            *info.get("missing_keys", ()),
            *(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())),
        }
    )
    if new:  # the usual case of fine-tuning: a pretrained body, a new head for these labels
        print(
            f"xt-hf: {name}: {len(new)} weights not in the pretrained ones of this size, initialised at random "
            f"(the {task} head: {', '.join(new[:4])}{', ...' if len(new) > 4 else ''})",
            file=sys.stderr,
        )
    return model
