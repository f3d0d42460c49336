"""Data from Hugging Face ``datasets`` (local csv/json/parquet files, or a hub name), tokenized for one task.

Batches are dicts ``{input_ids, attention_mask, ..., labels}`` padded to their longest example by the
task's ``transformers`` data collator, fed to the model by :func:`hf_forward`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from xt_training.errors import ConfigError
from xt_training.registry import Data

from .hub import local_or_hub, pretrained, quiet_datasets

Task = Literal["sequence-classification", "token-classification", "causal-lm"]

#: a file's suffix -> the datasets builder that reads it
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: our split names -> the names hub data sets use
HUB_SPLITS = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}
#: the loss each task's model trains with (equal to the model's own ``.loss`` given the labels)
LOSSES = {
    "sequence-classification": "cross-entropy",
    "token-classification": "token-cross-entropy",
    "causal-lm": "next-token-cross-entropy",
}
IGNORE = -100  # the label of positions without one (padding, a word's later pieces): torch's ignore_index


def hf_forward(model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(model(**inputs).logits, batch['labels'])``: the labels are kept out of the call, so the model does not
    compute its own loss beside the run's (the same value, see :data:`LOSSES`)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch.get("labels")


def hf_dataset(
    *,
    tokenizer: str,
    train_file: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    name: str | None = None,
    subset: str | None = None,
    task: Task = "sequence-classification",
    text: str = "text",
    text_pair: str | None = None,
    label: str = "label",
    max_length: int | None = None,
    val_fraction: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> Data:
    """Local csv/json/parquet files (``train_file=``, ``val_file=``, ``test_file=``) or a hub data set (``name=``), tokenized.

    Args:
        tokenizer: the tokenizer's hub name or directory (``AutoTokenizer``), usually the model's: model
            ``hf`` takes it as its default ``name``; ``xt run`` saves it into the run directory.
        train_file: the training file (``.csv``, ``.json``/``.jsonl`` or ``.parquet``).
        val_file: the validation file; default: ``val_fraction`` of the training file.
        test_file: the test file.
        name: a data set of the hub (``load_dataset(name, subset)``), instead of files.
        subset: the hub data set's configuration name.
        task: ``sequence-classification`` (a text, and a label per text), ``token-classification`` (a list
            of words, and a label per word) or ``causal-lm`` (texts only: the next token is the label).
        text: the column of the texts (of the word lists for token classification).
        text_pair: a second text column, for text pairs (sequence classification).
        label: the column of the labels: integers, or strings (then the classes, sorted).
        max_length: texts longer than this many tokens are truncated; default: the model's maximum.
        val_fraction: the share of the training data held out for validation when there is no validation split.
        batch_size: examples per batch.
        seed: the shuffle of the held-out validation examples.
    """
    import datasets

    if task not in LOSSES:
        raise ConfigError(f"data 'hf-dataset': unknown task {task!r}; choose one of: {', '.join(LOSSES)}")
    with quiet_datasets():
        splits = _load(datasets, name, subset, train_file, val_file, test_file)
    if "val" not in splits and val_fraction > 0:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        held = splits["train"].train_test_split(test_size=val_fraction, seed=seed)
        splits["train"], splits["val"] = held["train"], held["test"]
    columns = [text] + ([text_pair] if text_pair else []) + ([] if task == "causal-lm" else [label])
    for split, data in splits.items():
        absent = [c for c in columns if c not in data.column_names]
        if absent:
            raise ConfigError(
                f"the {split} data has no column {', '.join(map(repr, absent))}; its columns: "
                f"{', '.join(data.column_names)} (name them with --data-opt text=... / label=...)"
            )
    from transformers import AutoTokenizer

    tok = pretrained(AutoTokenizer.from_pretrained, local_or_hub(tokenizer), "tokenizer_config.json")
    info: dict[str, Any] = {"task": task, "tokenizer": local_or_hub(tokenizer)}
    if task == "causal-lm":
        if tok.pad_token is None:  # GPT-2's have none: pad with the end of text (masked out of the loss)
            tok.pad_token = tok.eos_token
        encode, collator = _causal_lm(tok, text, max_length)
    else:
        classes = _classes(splits, label, task)
        info.update(num_classes=len(classes), classes=classes)
        ids = {c: i for i, c in enumerate(classes)}
        if task == "sequence-classification":
            encode, collator = _sequences(tok, text, text_pair, label, ids, max_length)
        else:
            encode, collator = _tokens(tok, text, label, ids, max_length)
    loaders = {}
    from torch.utils.data import DataLoader

    for split, data in splits.items():
        with quiet_datasets():
            encoded = data.map(encode, batched=True, remove_columns=data.column_names)
        loaders[split] = DataLoader(encoded, batch_size, shuffle=split == "train", collate_fn=collator)
    metrics = (
        ["accuracy"] if task == "sequence-classification" else ["token-accuracy"] * (task != "causal-lm")
    )
    return Data(loaders, info, loss=LOSSES[task], metrics=metrics, forward_fn=hf_forward, tokenizer=tok)


def _load(datasets: Any, name: str | None, subset: str | None, *files: str | None) -> dict[str, Any]:
    """The splits ``train``, ``val``, ``test`` that exist, as ``datasets.Dataset``s."""
    if (name is None) == (files[0] is None):
        raise ConfigError(
            "data 'hf-dataset' reads either local files (--data-opt train_file=FILE [val_file=...] [test_file=...]) "
            "or a hub data set (--data-opt name=HUB_NAME): name one of them"
        )
    if name is not None:
        try:
            loaded = datasets.load_dataset(name, subset)
        except (OSError, ConnectionError, ValueError) as e:
            from .hub import missing

            raise ConfigError(missing(name, "the data set's files", e)) from None
        found = {ours: next((s for s in theirs if s in loaded), None) for ours, theirs in HUB_SPLITS.items()}
        if found["train"] is None:
            raise ConfigError(f"hub data set {name!r} has no train split; its splits: {', '.join(loaded)}")
        return {ours: loaded[theirs] for ours, theirs in found.items() if theirs is not None}
    paths = {s: Path(f) for s, f in zip(("train", "val", "test"), files) if f is not None}
    for split, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"{split}_file={path}: no such file")
    kinds = {BUILDERS.get(p.suffix.lower()) for p in paths.values()}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(
            f"data 'hf-dataset' reads files of one kind, ending in {', '.join(BUILDERS)}; got "
            f"{', '.join(p.name for p in paths.values())}"
        )
    loaded = datasets.load_dataset(kinds.pop(), data_files={s: str(p) for s, p in paths.items()})
    return {split: loaded[split] for split in paths}


def _classes(splits: Mapping[str, Any], label: str, task: str) -> list[Any]:
    """The label names: the data set's ClassLabel names, else the integers 0..max, else the strings sorted."""
    feature = splits["train"].features[label]
    inner = getattr(feature, "feature", None) if task == "token-classification" else feature
    if getattr(inner, "names", None):
        return list(inner.names)
    values: set[Any] = set()
    for data in splits.values():
        column = data[label]
        if task == "token-classification":
            column = [v for row in column for v in row]
        values.update(column)
    if all(isinstance(v, int) for v in values):
        if min(values) < 0:
            raise ConfigError(f"label column {label!r} holds negative integers; labels are 0, 1, ...")
        return list(range(max(values) + 1))
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"label column {label!r} must hold integers or strings (class names), not a mix")
    return sorted(values)


def _label_ids(values: list[Any], ids: Mapping[Any, int]) -> list[int]:
    return [ids[v] for v in values]


def _sequences(
    tok: Any, text: str, pair: str | None, label: str, ids: Mapping[Any, int], max_length: int | None
) -> tuple[Any, Any]:
    from transformers import DataCollatorWithPadding

    def encode(rows: dict[str, list[Any]]) -> dict[str, Any]:
        args = (rows[text], rows[pair]) if pair else (rows[text],)
        out = dict(tok(*args, truncation=True, max_length=max_length))
        out["labels"] = _label_ids(rows[label], ids)
        return out

    return encode, DataCollatorWithPadding(tok, return_tensors="pt")


def _tokens(
    tok: Any, words: str, label: str, ids: Mapping[Any, int], max_length: int | None
) -> tuple[Any, Any]:
    """Words split into tokens: a word's label goes to its first token, the others and special tokens get
    :data:`IGNORE` (the usual alignment of token classification)."""
    from transformers import DataCollatorForTokenClassification

    if not getattr(tok, "is_fast", False):
        raise ConfigError(
            "token classification needs a fast tokenizer (its word_ids); use a tokenizer.json one"
        )

    def encode(rows: dict[str, list[Any]]) -> dict[str, Any]:
        out = tok(rows[words], truncation=True, max_length=max_length, is_split_into_words=True)
        labels = []
        for i, tags in enumerate(rows[label]):
            previous, row = None, []
            for word in out.word_ids(i):
                row.append(IGNORE if word is None or word == previous else ids[tags[word]])
                previous = word
            labels.append(row)
        return {**out, "labels": labels}

    return encode, DataCollatorForTokenClassification(tok, return_tensors="pt")


def _causal_lm(tok: Any, text: str, max_length: int | None) -> tuple[Any, Any]:
    from transformers import DataCollatorForLanguageModeling

    def encode(rows: dict[str, list[Any]]) -> dict[str, Any]:
        return dict(tok(rows[text], truncation=True, max_length=max_length))

    # mlm=False: the labels are the input ids, padding masked out (the model's shift makes them next tokens)
    return encode, DataCollatorForLanguageModeling(tok, mlm=False, return_tensors="pt")
