"""``xt new plugin NAME``: a working plugin package, copied from ``templates/plugin``.

The template is a real plugin named ``example`` (distribution ``xt-example``, module ``xt_example``,
names ``example-mlp``, ...): its files are copied with the whole word ``example`` replaced by NAME and
``xt_example`` by NAME's module, so what is generated is exactly what the test suite installs and tests.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

TEMPLATE = Path(__file__).parent / "templates" / "plugin"
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def new_plugin(name: str, parent: str | Path = ".") -> Path:
    """Write the plugin NAME into ``parent/xt-NAME`` and return that directory."""
    name = name.removeprefix("xt-")
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"plugin name {name!r}: use lower-case letters, digits and single hyphens, starting with a "
            "letter, e.g. `xt new plugin my-models`"
        )
    module = "xt_" + name.replace("-", "_")
    target = Path(parent) / f"xt-{name}"
    if target.exists():
        raise ConfigError(f"{target} exists: choose another NAME, or another directory with --dir")
    for source in sorted(TEMPLATE.rglob("*")):
        if source.is_dir() or "__pycache__" in source.parts:
            continue
        relative = source.relative_to(TEMPLATE).as_posix().replace("xt_example", module)
        text = re.sub(r"\bexample\b", name, source.read_text().replace("xt_example", module))
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_text(text)
    return target
