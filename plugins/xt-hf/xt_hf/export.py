"""``xt export RUN --format hf``: the run's model and tokenizer as a ``save_pretrained`` directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError


def export_hf(run_dir: Path, output: Any, *, checkpoint: str, trust: bool) -> Path:
    """The model with the checkpoint's weights and the run's tokenizer, written by ``save_pretrained`` into
    ``output`` (default: ``RUN/hf``, ``RUN/hf-last`` for the last checkpoint); ``from_pretrained`` reads it."""
    from transformers import PreTrainedModel

    from xt_training import load_model
    from xt_training.runs import load_tokenizer

    model = load_model(run_dir, checkpoint, trust=trust)
    if not isinstance(model, PreTrainedModel):
        raise ConfigError(
            f"--format hf writes transformers models; the model of '{run_dir}' is a {type(model).__name__}: "
            "export it with --format onnx, pt2 or torchscript"
        )
    out = (
        Path(output)
        if output is not None
        else run_dir / ("hf" if checkpoint == "best" else f"hf-{Path(checkpoint).stem}")
    )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; --format hf writes a directory: name a directory")
    model.save_pretrained(out)
    tokenizer = load_tokenizer(run_dir, trust=trust)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
