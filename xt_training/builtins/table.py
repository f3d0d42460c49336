"""CSV tables as a model's inputs: columns by name, missing values, text columns one-hot encoded.

The CSV data (:func:`xt_training.builtins.datasets.csv_table`) fits an encoding on its training file
(:func:`fit`) and records it as JSON in ``info['table']``, which a run keeps in its ``config.json``::

    {"columns": ["age", "city"],                 # the file's columns the model reads, in this order
     "inputs": ["age", "city=Paris", "city=Rome"],  # the model's input features they become
     "one_hot": {"city": ["Paris", "Rome"]},      # NAME=VALUE is 1.0 where column NAME holds VALUE, else 0.0
     "fill": {"age": 41.5},                        # the value of a missing number (na=mean|median)
     "na": "mean", "id": "row_id", "label": "price", "task": "regression"}

:func:`encode` applies a recorded encoding to any file that has those columns, matched by name (more
columns, or another order, are fine): the training file's rows, a test file, rows to predict. Torch-free.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: cells that mean "no value" (pandas' default ``na_values``, less its rarer spellings)
MISSING = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "null", "NULL", "None", "#N/A", "<NA>"})
#: what the CSV data's ``na`` option does with a row that has a missing value
NA_CHOICES = ("error", "drop", "mean", "median")
_NA_FIX = "choose what to do with missing values: --data-opt na=drop|mean|median"


@dataclass
class Table:
    """The cells of a CSV file as written (stripped): its header, its rows and each row's line number."""

    path: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    what: str = "CSV file"  # in messages: "test file", "predict file"

    def index(self, column: str) -> int:
        return self.header.index(column)

    def require(self, columns: Sequence[str], fix: str) -> None:
        """A one-line error naming the ``columns`` the file lacks, ending in ``fix``."""
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise ConfigError(
                f"{self.what} '{self.path}' has no column {', '.join(map(repr, missing))}; columns: "
                f"{', '.join(self.header)}; {fix}"
            )

    def values(self, column: str) -> list[str]:
        j = self.index(column)
        return [row[j] for row in self.rows]

    def subset(self, order: Sequence[int]) -> Table:
        rows, lines = [self.rows[i] for i in order], [self.lines[i] for i in order]
        return Table(self.path, self.header, rows, lines, self.what)

    def without_missing(self, columns: Sequence[str]) -> Table:
        """The rows that have a value in every one of ``columns`` (``na=drop``)."""
        at = [self.index(c) for c in columns]
        kept = [i for i, row in enumerate(self.rows) if not any(row[j] in MISSING for j in at)]
        return self.subset(kept)


def read(path: str, delimiter: str, what: str = "CSV file") -> Table:
    """The header and rows of a CSV file; rows of another length than the header are errors."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} '{path}' does not exist; pass the file with --data-opt path=FILE")
    with file.open(newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{what} '{path}' is empty; it needs a header row and data rows")
        header = [h.strip() for h in header]
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise ConfigError(f"{what} '{path}' names column {twice[0]!r} twice; rename one of them")
        rows, lines = [], []
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConfigError(f"{path}, line {line}: {len(row)} values, but the header has {len(header)}")
            rows.append([v.strip() for v in row])
            lines.append(line)
    if not rows:
        raise ConfigError(f"{what} '{path}' has a header but no data rows")
    return Table(str(path), header, rows, lines, what)


def is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def columns_option(value: Any, name: str) -> list[str]:
    """A columns option as names: ``'a,b'`` (the command line's form), a list, or None (no columns)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    if isinstance(value, (list, tuple)):
        return [str(c) for c in value]
    raise ConfigError(f"{name} names columns: 'a,b' or a list of names, not {value!r}")


def feature_columns(
    table: Table, label: str, features: list[str], ignore: list[str], id: str | None, one_hot: list[str]
) -> list[str]:
    """The columns the model reads: ``features`` (default: all but the label and the id), less ``ignore``."""
    named = {"features": features, "ignore": ignore, "one_hot": one_hot, "id": [id] if id else []}
    for option, columns in named.items():
        table.require(columns, f"fix --data-opt {option}=")
    chosen = features or [c for c in table.header if c not in (label, id)]
    for taken, option in ((label, "label"), (id, "id")):
        if taken in features:
            raise ConfigError(
                f"column {taken!r} is the {option}; it cannot be a feature too (--data-opt features=)"
            )
    columns = [c for c in chosen if c not in ignore]
    if not columns:
        raise ConfigError(
            f"{table.what} '{table.path}' leaves no feature columns; keep some (--data-opt ignore=)"
        )
    not_read = [c for c in one_hot if c not in columns]
    if not_read:
        raise ConfigError(
            f"one_hot names {', '.join(map(repr, not_read))}, which the model does not read "
            f"(features: {', '.join(columns)})"
        )
    return columns


def check_numbers(table: Table, columns: Sequence[str], id: str | None) -> None:
    """A one-line error when a column the model reads as numbers holds text, naming the options that fix it.

    A column of text whose every value is different names the rows (an id column, when none is named yet).
    """
    text = {}
    for column in columns:
        j = table.index(column)
        bad = next(
            (i for i, row in enumerate(table.rows) if row[j] not in MISSING and not is_number(row[j])), None
        )
        if bad is not None:
            text[column] = (table.lines[bad], table.rows[bad][j])
    if not text:
        return
    (column, (line, value)), n = next(iter(text.items())), len(text)
    id_like = next((c for c in text if id is None and len(set(table.values(c))) == len(table.rows)), None)
    fixes = [f"name the rows with --data-opt id={id_like}"] if id_like else []
    rest = [c for c in text if c != id_like]
    if rest:
        names, it = ",".join(rest), "them" if len(rest) > 1 else "it"
        fixes += [
            f"one-hot encode text with --data-opt one_hot={names}",
            f"leave {it} out with --data-opt ignore={names}",
        ]
    others = f" (and {n - 1} more column{'s' if n > 2 else ''} of text)" if n > 1 else ""
    raise ConfigError(
        f"{table.path}, line {line}, column {column!r}: {value!r} is not a number{others}; "
        + (", ".join(fixes[:-1]) + ", or " + fixes[-1] if len(fixes) > 1 else fixes[0])
    )


def check_complete(table: Table, columns: Sequence[str]) -> None:
    """With ``na=error``: the first missing cell of ``columns``, in file order, is an error naming the ``na`` option."""
    at = [(c, table.index(c)) for c in columns]
    for row, line in zip(table.rows, table.lines):
        for column, j in at:
            if row[j] in MISSING:
                raise ConfigError(
                    f"{table.path}, line {line}, column {column!r}: a missing value ({row[j]!r}); {_NA_FIX}"
                )


def categories(values: list[str]) -> list[str]:
    """Category or class names sorted numerically when they are all numbers, else alphabetically."""
    unique = set(values)
    return sorted(unique, key=float) if all(is_number(v) for v in unique) else sorted(unique)


def fit(
    train: Table, whole: Table, columns: list[str], one_hot: list[str], na: str, **facts: Any
) -> dict[str, Any]:
    """The encoding of ``columns``: categories from the ``whole`` training file, fill values from its ``train`` rows.

    With ``na=mean|median`` every number column gets a fill value, so that a value missing only in the
    validation rows or in rows to predict is filled in too. ``facts`` (the label, the id column, the task)
    are recorded with it.
    """
    one_hot_values = {c: categories([v for v in whole.values(c) if v not in MISSING]) for c in one_hot}
    fill = {}
    for column in columns if na in ("mean", "median") else []:
        if column in one_hot_values:
            continue  # a missing category is no category: all its columns 0.0
        values = [float(v) for v in train.values(column) if v not in MISSING]
        if not values:
            raise ConfigError(
                f"column {column!r} of '{whole.path}' has no value in the training rows to fill missing "
                f"ones with; leave it out with --data-opt ignore={column}"
            )
        fill[column] = statistics.fmean(values) if na == "mean" else statistics.median(values)
    inputs = [
        f"{c}={v}" if c in one_hot_values else c for c in columns for v in one_hot_values.get(c, [None])
    ]
    return {"columns": columns, "inputs": inputs, "one_hot": one_hot_values, "fill": fill, "na": na, **facts}


def encode(table: Table, record: dict[str, Any]) -> list[list[float]]:
    """The rows of ``table`` as the model's inputs, the columns found by name as ``record`` (:func:`fit`) says."""
    at = [(c, table.index(c)) for c in record["columns"]]
    return [
        [x for column, j in at for x in _cell(row[j], column, record, table, line)]
        for row, line in zip(table.rows, table.lines)
    ]


def _cell(value: str, column: str, record: dict[str, Any], table: Table, line: int) -> list[float]:
    """The model's inputs from one cell: one number, or a column's one-hot values."""
    one_hot = record["one_hot"].get(column)
    where = f"{table.path}, line {line}, column {column!r}"
    if value in MISSING:
        if column in record["fill"]:
            return [record["fill"][column]]
        if one_hot is not None and record["na"] in ("mean", "median"):
            return [0.0] * len(one_hot)
        if record["na"] == "drop":  # the training rows with one were dropped: this is a row to predict
            raise ConfigError(
                f"{where}: a missing value ({value!r}); the run left out rows with missing values when it "
                "trained (na=drop), but a row to predict needs its values: fill them in, or train with "
                "na=mean|median"
            )
        raise ConfigError(f"{where}: a missing value ({value!r}); {_NA_FIX}")
    if one_hot is not None:
        if value not in one_hot:
            known = ", ".join(one_hot[:5]) + (", ..." if len(one_hot) > 5 else "")
            raise ConfigError(
                f"{where}: {value!r} is none of the values the model was trained on ({known}), so it has no "
                "encoding; leave the row out"
            )
        return [float(value == v) for v in one_hot]
    try:
        return [float(value)]
    except ValueError:
        raise ConfigError(
            f"{where}: {value!r} is not a number, and the column holds numbers in the training file"
        ) from None


def labels(table: Table, label: str, na: str) -> list[str]:
    """The label of every row; a missing one is an error unless ``na=drop`` (whose rows are gone already)."""
    values = table.values(label)
    for value, line in zip(values, table.lines):
        if value in MISSING:
            raise ConfigError(
                f"{table.path}, line {line}: the label {label!r} is missing ({value!r}); leave out rows with "
                "missing values with --data-opt na=drop"
            )
    return values


def task_of(values: list[str], task: str | None, label: str) -> tuple[str, str | None]:
    """``'classification'`` or ``'regression'``, and the sentence that says how it was inferred (None when given).

    Inferred: integers and text are class labels, numbers with decimals are a quantity to regress on.
    """
    if task is not None:
        if task not in ("classification", "regression"):
            raise ConfigError(f"task must be 'classification' or 'regression', not {task!r}")
        return task, None
    numbers = all(is_number(v) for v in values)
    if numbers and not all(_is_integer(v) for v in values):
        example = next(v for v in values if not _is_integer(v))
        return "regression", (
            f"csv: label {label!r} holds numbers with decimals ({example}): regression, with the MSE loss; "
            "--data-opt task=classification to make them classes"
        )
    n = len(set(values))
    kind = "integers" if numbers else "values"
    return "classification", (
        f"csv: label {label!r} holds {n} distinct {kind}: classification into {n} classes"
        + ("; --data-opt task=regression to predict the number" if numbers else "")
    )


def _is_integer(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def numbers(table: Table, label: str, values: list[str]) -> list[float]:
    """The labels of a regression as numbers; text is an error naming the task option."""
    try:
        return [float(v) for v in values]
    except ValueError:
        line, value = next((n, v) for n, v in zip(table.lines, values) if not is_number(v))
        raise ConfigError(
            f"{table.path}, line {line}: label {label!r} is {value!r}, not a number; task=regression needs "
            "numbers (task=classification for classes)"
        ) from None
