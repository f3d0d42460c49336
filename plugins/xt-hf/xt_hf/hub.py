"""Loading from a local directory or the Hugging Face hub, with one-line errors for what cannot be found."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError, first_line


def pretrained(load: Callable[..., Any], name: str, file: str, **options: Any) -> Any:
    """``load(name, **options)`` (a ``from_pretrained``); a name neither on disk nor in the cache is one line
    naming the hub file it needs, the cache (``HF_HOME``) and the offline switch (``HF_HUB_OFFLINE``)."""
    with quiet_transformers():
        try:
            return load(name, **options)
        except OSError as e:
            raise ConfigError(missing(name, file, e)) from None


def missing(name: str, file: str, error: BaseException) -> str:
    """Why ``name`` could not be loaded, and the fix."""
    if Path(name).exists():
        return (
            f"'{name}' is not a directory written by save_pretrained ({first_line(error)}); it needs {file}"
        )
    if name.startswith((".", "/", "~")):
        return f"'{name}': no such directory; name a directory written by save_pretrained, or a hub name"
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
    return (
        f"'{name}' would have to be downloaded from the Hugging Face hub ({name}/{file}), and it is not in the "
        f"cache {constants.HF_HUB_CACHE} (HF_HOME){offline}: connect and unset HF_HUB_OFFLINE, copy a cache "
        "that holds it into HF_HOME, or name a local directory written by save_pretrained"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own loading report (a table of keys) and progress bars, silenced for one load: the
    plugin says in one line what matters (a new head)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def local_or_hub(name: str) -> str:
    """A local path as an absolute one (the run records it: its tools may run from another directory)."""
    path = Path(os.path.expanduser(name))
    return str(path.resolve()) if path.exists() else name


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets' progress bars ("Generating train split", "Map") off while a run's data is prepared."""
    from datasets.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()
