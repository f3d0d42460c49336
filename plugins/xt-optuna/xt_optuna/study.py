"""A study directory: what the study is, where its storage is, and opening it from several processes at once.

Layout::

    DIR/study.json          the study's name, its storage (null: DIR/study.db) and its definition; read
                            by `xt show DIR`, `xt plot DIR` and by later `xt tune` runs on DIR
    DIR/study.db            the default storage: SQLite, no server
    DIR/trials/<number>/    each trial's run directory (see :mod:`xt_optuna.tuning`)

The *definition* is what makes the trials comparable: the base run configuration (with the monitored
value and its mode) and the search space. It is kept with the study in Optuna's storage too (the study
attribute ``xt_tune``), because the storage is what processes on several machines share: each checks its
definition against it. A study continues only with the same definition; another one is refused with a
message saying what differs.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError

from .space import SpaceFunction, check_space, parse_space

__all__ = [
    "STUDY_FILE",
    "is_study_dir",
    "read_record",
    "storage_url",
    "open_storage",
    "absolute_url",
    "mask",
    "make_definition",
    "differences",
    "open_study",
]

STUDY_FILE = "study.json"
DB_FILE = "study.db"
TRIALS_DIR = "trials"
KIND = "xt-optuna study"
ATTR = "xt_tune"
FORMAT = 1


def is_study_dir(path: str | Path) -> bool:
    """Whether ``path`` is a study directory: its ``study.json`` was written by ``xt tune``."""
    try:
        record = json.loads((Path(path) / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("kind") == KIND


def read_record(study_dir: str | Path) -> dict[str, Any]:
    """The contents of ``DIR/study.json``."""
    path = Path(study_dir) / STUDY_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; is it a study directory of `xt tune`?") from None
    if (
        not isinstance(record, dict)
        or record.get("kind") != KIND
        or not isinstance(record.get("definition"), dict)
    ):
        raise ConfigError(f"{path} is not the record of an `xt tune` study")
    return record


def storage_url(study_dir: str | Path, storage: str | None) -> str:
    """``storage``, or the default ``sqlite:///DIR/study.db``."""
    return storage or f"sqlite:///{Path(study_dir).resolve() / DB_FILE}"


def absolute_url(url: str) -> str:
    """``url`` with a relative SQLite or journal file path made absolute: the study directory records it,
    and ``xt show DIR`` from another working directory must find the same file."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix) and url[len(prefix) :] and not url[len(prefix) :].startswith("/"):
            return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def mask(url: str) -> str:
    """The URL with its password hidden, for messages and summaries."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url``.

    ``journal:PATH`` is a journal file (a shared file system without a database server); ``sqlite:``
    URLs wait up to 60 s for the file lock instead of failing when several processes write at once; any
    other URL is an Optuna RDB storage (``postgresql://...``, ``mysql://...``).
    """
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as e:
        raise ConfigError(f"storage {mask(url)} needs a package that is not installed: {e}") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"cannot open storage {mask(url)}: {type(e).__name__}: {first}; pass an Optuna storage URL "
            "(sqlite:///PATH, postgresql://..., journal:PATH)"
        ) from None


def make_definition(
    config: Mapping[str, Any], search: Mapping[str, str] | str | Path | Callable[[Any], Mapping[str, Any]]
) -> dict[str, Any]:
    """The definition of a study: the checked base run configuration and the search space.

    ``search`` is ``{KEY: SPEC}``, a ``.py`` file defining ``search_space(trial)``, or that function.
    The monitored value defaults to ``val/loss`` and its mode to the direction its metric declares (a loss
    is minimised): the study's direction must be known before the first trial runs.
    """
    from xt_training.building import monitor_direction
    from xt_training.config import check_config

    config = check_config(dict(config))
    for kind, plural in (("model", "models"), ("data", "data")):
        if config[kind] is None:
            raise ConfigError(f"no {kind} is chosen; pick one with --{kind} NAME (`xt list {plural}`)")
    config["monitor"] = config["monitor"] or "val/loss"
    config["mode"] = config["mode"] or monitor_direction(config)  # F.train's rule
    if config["mode"] is None:
        raise ConfigError(
            f"which way {config['monitor']!r} improves is unknown: its metric declares no higher_is_better; "
            "pass --mode min or --mode max"
        )
    definition: dict[str, Any] = {"format": FORMAT, "config": config}
    if isinstance(search, Mapping):
        space = parse_space(search)
        check_space(space, config)
        definition["search"] = {key: str(param) for key, param in space.items()}
    else:
        definition["search_space"] = SpaceFunction.load(search).record
    try:  # what the storage gives back later: tuples become lists
        return json.loads(json.dumps(definition))
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"the run configuration must hold JSON values only, as config.json does: {e}"
        ) from None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two definitions, one short phrase each."""
    found = []
    before, after = old["config"], new["config"]
    for key in dict.fromkeys([*before, *after]):
        if before.get(key) != after.get(key):
            found.append(f"{key}: {_short(before.get(key))} then, {_short(after.get(key))} now")
    if ("search" in old) != ("search" in new):
        then, now = (_space_name(d) for d in (old, new))
        found.append(f"the search space was {then} then, {now} now")
    elif "search" in old:
        a, b = old["search"], new["search"]
        for key in dict.fromkeys([*a, *b]):
            if key not in b:
                found.append(f"--search {key}={a[key]} is missing now")
            elif key not in a:
                found.append(f"--search {key}={b[key]} is new")
            elif a[key] != b[key]:
                found.append(f"--search {key}: {a[key]} then, {b[key]} now")
    elif old["search_space"]["source"] != new["search_space"]["source"]:
        found.append(f"search_space of {_space_name(new)} changed: {_first_change(old, new)}")
    return found


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _space_name(definition: Mapping[str, Any]) -> str:
    if "search" in definition:
        return "--search " + " ".join(f"{k}={v}" for k, v in definition["search"].items())
    record = definition["search_space"]
    return record.get("file") or record["object"]


def _first_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    a = old["search_space"]["source"].splitlines()
    b = new["search_space"]["source"].splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if tag != "equal":
            then = a[i1].strip() if i1 < i2 else "(nothing)"
            now = b[j1].strip() if j1 < j2 else "(nothing)"
            return f"line {j1 + 1}: {then!r} then, {now!r} now"
    return "its text differs"


@contextlib.contextmanager
def _locked(study_dir: Path) -> Iterator[None]:
    """Processes opening the same study directory take turns (creating an SQLite schema twice fails)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory file locks; concurrent first starts may race
        yield
        return
    with open(study_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(
    study_dir: Path, definition: dict[str, Any] | None, storage: str | None, study_name: str | None
) -> tuple[Any, dict[str, Any]]:
    """Create or load the study of ``study_dir``; return it and the record written to ``study.json``.

    ``definition`` None continues the study as it was defined. The storage and study name default to
    those the directory was made with; other ones are refused, since a study found elsewhere would number
    its trials from 0 again, over the directories already there.
    """
    import optuna

    from xt_training.files import write_json

    storage = None if storage is None else absolute_url(storage)
    if definition is None and storage is None and not is_study_dir(study_dir):
        raise ConfigError(
            f"'{study_dir}' holds no study yet; define one with --model, --data and --search KEY=SPEC "
            "(or a search_space file)"
        )
    backend = None if storage is None else open_storage(storage)  # a bad URL fails before DIR is made
    study_dir.mkdir(parents=True, exist_ok=True)
    with _locked(study_dir):
        if is_study_dir(study_dir):
            record = read_record(study_dir)
            for flag, given, kept in (("--storage", storage, record["storage"]), ("--study-name", study_name, record["study_name"])):  # fmt: skip
                if given is not None and given != kept:
                    raise ConfigError(
                        f"'{study_dir}' holds study {record['study_name']!r} in "
                        f"{mask(storage_url(study_dir, record['storage']))}; pass the same {flag} or none, "
                        "or use a new --study-dir"
                    )
            storage, study_name = record["storage"], record["study_name"]
        study_name = study_name or study_dir.name
        url = storage_url(study_dir, storage)
        backend = backend or open_storage(url)
        try:
            study = optuna.load_study(study_name=study_name, storage=backend)
        except KeyError:
            if definition is None:
                raise ConfigError(
                    f"'{study_dir}' holds no study yet; define one with --model, --data and --search KEY=SPEC "
                    "(or a search_space file)"
                ) from None
            direction = "maximize" if definition["config"]["mode"] == "max" else "minimize"
            study = optuna.create_study(
                study_name=study_name, storage=backend, direction=direction, load_if_exists=True
            )
        kept = study.user_attrs.get(ATTR)
        if kept is None:
            if definition is None or study.trials:
                raise ConfigError(
                    f"study {study_name!r} in {mask(url)} was not made by `xt tune`; pick another --study-name"
                )
            study.set_user_attr(ATTR, definition)
            kept = definition
        elif definition is not None:
            differ = differences(kept, definition)
            if differ:
                raise ConfigError(
                    f"'{study_dir}' was started with another definition ({'; '.join(differ[:4])}); repeat its "
                    "options, or give none of them to continue it as it is, or use a new --study-dir"
                )
        _check_trial_dirs(study_dir, study, url)
        record = {
            "kind": KIND,
            "format": FORMAT,
            "study_name": study_name,
            "storage": storage,
            "definition": kept,
        }
        write_json(study_dir / STUDY_FILE, record)
    return study, record


def _check_trial_dirs(study_dir: Path, study: Any, url: str) -> None:
    """Trial directories the study does not know mean another storage made them: never number over them."""
    trials = study_dir / TRIALS_DIR
    if not trials.is_dir():
        return
    known = {t.number for t in study.get_trials(deepcopy=False)}
    stray = sorted(int(p.name) for p in trials.iterdir() if p.name.isdigit() and int(p.name) not in known)
    if stray:
        raise ConfigError(
            f"{trials} holds trial {stray[0]}, which study {study.study_name!r} in {mask(url)} does not have: "
            "the trials were run with another storage; pass that --storage, or use a new --study-dir"
        )
