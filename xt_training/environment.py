"""``xt env``: what a bug report needs to know about the machine, as ``accelerate env`` and ``llm --version`` say it.

Versions (Python, torch and its CUDA, xt-training, the libraries it uses), the devices torch sees, the
installed plugins, and the environment variables that change what a run does. Library versions are read
from the installed distributions' metadata, without importing them; torch is imported for its devices.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from ._version import __version__
from .registry import Registry

__all__ = ["environment", "format_environment"]

#: the distributions whose versions decide behaviour besides torch's: its companions, and what loggers,
#: export, plots and the CLI use
LIBRARIES = (
    *("torchvision", "torchmetrics", "numpy", "tensorboard", "onnx", "onnxscript", "onnxruntime"),
    *("matplotlib", "pycocotools", "transformers", "optuna", "pluggy", "click", "tqdm"),
)
#: environment variables that change what a run does: devices, distributed training, threads, caches
VARIABLES = (
    *("CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "PYTORCH_CUDA_ALLOC_CONF", "TORCH_HOME", "HF_HOME"),
    *("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("OMP_NUM_THREADS", "MKL_NUM_THREADS"),
)
PREFIXES = ("XT_", "NCCL_", "TORCH_")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")  # never printed: the output is meant to be pasted


def environment(reg: Registry, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The facts ``xt env`` prints, as a JSON-able dict: versions, devices, plugins, environment variables."""
    import torch  # lazy: `xt --help` and the other listings must not import it

    environ = dict(os.environ if environ is None else environ)
    return {
        "xt-training": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}) at {sys.executable}",
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "devices": _devices(torch),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "status": p.status}
            | ({"error": p.error} if p.error else {})
            for p in reg.plugins.values()
            if not p.builtin
        ],
        "environment_variables": {
            k: v
            for k, v in sorted(environ.items())
            if (k in VARIABLES or k.startswith(PREFIXES)) and not any(w in k for w in SECRET_WORDS)
        },
    }


def _devices(torch: Any) -> list[str]:
    devices = [f"cpu: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}"
            )
    else:
        devices.append(
            "cuda: not available" + (" (torch built without CUDA)" if torch.version.cuda is None else "")
        )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps: available")
    return devices


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def format_environment(env: dict[str, Any]) -> str:
    """:func:`environment` as the lines ``xt env`` prints."""
    torch = env["torch"]
    cuda = f", CUDA {torch['cuda']}" if torch["cuda"] else ", CPU-only build"
    cudnn = f", cuDNN {torch['cudnn']}" if torch["cudnn"] else ""
    lines = [
        f"xt-training {env['xt-training']}",
        f"python: {env['python']}",
        f"platform: {env['platform']}",
        f"torch: {torch['version']}{cuda}{cudnn}",
        "devices:",
        *(f"  {d}" for d in env["devices"]),
        "libraries:",
        *(f"  {name} {v or 'not installed'}" for name, v in env["libraries"].items()),
        "plugins:" + ("" if env["plugins"] else " none installed"),
    ]
    for p in env["plugins"]:
        dist = f"{p['distribution']} {p['version'] or ''}".strip() if p["distribution"] else "(module)"
        lines.append(f"  {p['name']}: {dist}, {p['status']}" + (f": {p['error']}" if "error" in p else ""))
    variables = env["environment_variables"]
    lines.append("environment variables:" + ("" if variables else " none of the relevant ones set"))
    lines += [f"  {k}={v}" for k, v in variables.items()]
    return "\n".join(lines)
