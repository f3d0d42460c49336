"""The plugin module named by the entry point: registers names without importing transformers or datasets."""

from __future__ import annotations

from typing import Any

from xt_training.hookspecs import hookimpl


@hookimpl
def register_models(register: Any) -> None:
    register(
        "hf",
        "xt_hf.models:hf_model",
        description="a Hugging Face transformers model by hub name or directory (name=, task=)",
        argument="name",  # hf:bert-base-uncased is hf with name='bert-base-uncased'
    )


@hookimpl
def register_data(register: Any) -> None:
    register(
        "hf-dataset",
        "xt_hf.data:hf_dataset",
        description="Hugging Face datasets: csv/json/parquet files or a hub name, tokenized (tokenizer=)",
    )


@hookimpl
def register_losses(register: Any) -> None:
    register(
        "token-cross-entropy",
        "xt_hf.losses:token_cross_entropy",
        description="cross-entropy per labelled token (token classification; -100 ignored)",
    )
    register(
        "next-token-cross-entropy",
        "xt_hf.losses:next_token_cross_entropy",
        description="cross-entropy of each token's logits against the next token (causal LM; -100 ignored)",
    )


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "token-accuracy",
        "xt_hf.losses:token_accuracy",
        description="accuracy over the labelled tokens (token classification)",
        higher_is_better=True,
    )


@hookimpl
def export_formats() -> dict[str, str]:
    return {"hf": "xt_hf.export:export_hf"}
