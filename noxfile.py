"""nox sessions. They run in the current environment (``make test`` builds it): torch is a 5 GB
install, so sessions reuse it instead of building a fresh virtualenv each."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite."""
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the pages' generated parts (docs/_hooks/xt_docs.py), then build the documentation site into
    site/ in strict mode: broken links, missing anchors, unknown API references and pages outside the
    navigation fail. Needs the docs extra (in dev)."""
    session.run("python", "docs/_hooks/xt_docs.py")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (about 10 minutes): writes benchmarks/RESULTS.md. Arguments go to benchmarks/run.py,
    e.g. `nox -s bench -- --quick` or `-- --compare /path/to/patched/copy`."""
    # benchmark-only extras (peers to compare with, psutil for RSS); never runtime dependencies
    session.run("python", "-m", "pip", "install", "-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
