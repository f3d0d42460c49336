"""The documentation: the site builds in strict mode, every hook and every command is documented on it, every
example is shown on it, the pages read as plain markdown (their generated parts current, every anchor there),
every block a page marks runnable runs and prints what the page shows, and the README's commands work.

The build is the real ``mkdocs build --strict`` in a subprocess (broken links, missing anchors, pages outside
the navigation and unknown API references fail it); its generated pages are read back from the built HTML.
The runnable blocks run as tests/doc_blocks.py describes, each page's in a fresh directory, two pages at a
time.
"""

from __future__ import annotations

import html
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from doc_blocks import SEPARATOR, blocks, shows

from xt_training import hookspecs

ROOT = Path(__file__).resolve().parents[1]
XT = str(Path(sys.executable).with_name("xt"))
MKDOCS = (
    importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("mkdocstrings") is not None
)
needs_mkdocs = pytest.mark.skipif(
    not MKDOCS, reason="mkdocs and mkdocstrings are not installed: pip install -e '.[docs]' to build the docs"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with ``mkdocs build --strict`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def text_of(page: Path) -> str:
    """The visible text of a built page's article (tags dropped, entities decoded)."""
    content = page.read_text()
    article = content[content.index("<article") : content.index("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", "", article))


def hook_specs() -> dict:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "xt_training_spec")
    }


# --- hooks -------------------------------------------------------------------------------------------------------
def test_every_hookspec_has_a_docstring_naming_each_parameter():
    specs = hook_specs()
    assert {"register_models", "register_metrics", "register_commands", "show_directory"} <= set(specs)
    for name, fn in specs.items():
        doc = inspect.getdoc(fn) or ""
        assert len(doc.splitlines()) >= 3, f"hook {name} needs a docstring that says what it is for"
        for param in inspect.signature(fn).parameters:
            assert re.search(rf"^:param {param}: \S", doc, re.M), (
                f"hook {name}: parameter {param} is not documented"
            )
        if fn.xt_training_spec.get("firstresult") or inspect.signature(fn).return_annotation not in (
            None,
            "None",
        ):
            assert re.search(r"^:returns?: \S", doc, re.M), f"hook {name}: its return value is not documented"


@needs_mkdocs
def test_every_hook_is_on_the_generated_hook_reference(site):
    page = (site / "reference" / "hooks" / "index.html").read_text()
    text = text_of(site / "reference" / "hooks" / "index.html")
    for name, fn in hook_specs().items():
        assert f'id="{name}"' in page, f"hook {name} has no section on the hook reference"
        assert f"{name}({', '.join(inspect.signature(fn).parameters)})" in text
        summary = inspect.getdoc(fn).splitlines()[0].split("`")[0].strip()
        assert summary in text, f"the summary of hook {name} is not on the page"


# --- CLI ---------------------------------------------------------------------------------------------------------
def xt_commands() -> list[str]:
    """The commands `xt --help` lists (built-in plugins only: autoload off)."""
    env = {**os.environ, "XT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([XT, "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
    listing = out.split("Commands:", 1)[1]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.strip()]


@needs_mkdocs
def test_every_command_and_option_is_on_the_generated_cli_reference(site):
    import click

    from xt_training.cli import cli

    page = (site / "reference" / "cli" / "index.html").read_text()
    text = text_of(site / "reference" / "cli" / "index.html")
    commands = xt_commands()
    assert {"run", "train", "test", "list", "plugins", "predict", "export"} <= set(commands)
    ctx = click.Context(cli, info_name="xt")
    ctx.params = {"plugins": ()}
    for name in commands:
        assert f'id="xt-{name}"' in page, f"`xt {name}` has no section on the CLI reference"
        command = cli.get_command(ctx, name)
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts] if isinstance(param, click.Option) else []:
                assert opt in text, f"`xt {name} {opt}` is not on the CLI reference"
    assert 'id="xt-tune"' in page  # the repository's xt-optuna plugin adds it


# --- other generated pages ----------------------------------------------------------------------------------------
@needs_mkdocs
def test_bad_input_table_has_at_least_20_real_messages(site):
    page = (site / "fault-tolerance" / "index.html").read_text()
    table = page[page.index('id="bad-input-and-its-errors"') :]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    assert len(rows) >= 20
    text = html.unescape(re.sub(r"<[^>]+>", "", table))
    for message in ("unknown model 'cnnn'; did you mean 'cnn'?", "loss_fn must return a scalar tensor",
                    "holds objects other than tensors", "cannot resume from", "loss_fn failed on y_pred",
                    "is not a PyTorch checkpoint", "already holds a run; continue it with",
                    "forward_fn must return a (y_pred, y) pair"):  # fmt: skip
        assert message in text


@needs_mkdocs
def test_every_example_is_on_the_examples_page(site):
    text = text_of(site / "examples" / "index.html")
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert f"examples/{example.name}" in text, f"examples/{example.name} is not on the examples page"
        first_line = example.read_text().splitlines()[0].strip('"')
        assert first_line[:60] in text, f"the source of examples/{example.name} is not on the examples page"


@needs_mkdocs
def test_benchmark_results_and_registered_names_are_on_their_pages(site):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    performance = text_of(site / "performance" / "index.html")
    first_row = next(line for line in results.splitlines() if line.startswith("| plain |"))
    assert first_row.split("|")[2].strip() in performance
    names = text_of(site / "reference" / "names" / "index.html")
    for name in ("cnn", "synthetic-images", "roc-auc", "tensorboard", "adamw", "one-cycle", "early-stopping"):
        assert name in names
    assert "ece" in names and "xt-calibration" in names  # a repository plugin's names, labelled


@pytest.mark.slow
@needs_mkdocs  # the API reference's text is rendered with griffe, mkdocstrings' reader
def test_generated_parts_of_the_pages_are_current():
    """The committed text between ``<!-- xt:KIND -->`` and ``<!-- /xt:KIND -->`` is what the code generates now:
    a change to a command, a hook, a name, an error message, an example, a docstring or the benchmark
    results must come with the pages regenerated, or the plain-markdown pages (GitHub) drift from the code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "docs/_hooks/xt_docs.py", "--check"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a markdown page: each heading's text lower-cased, without punctuation but
    ``-`` and ``_``, spaces as ``-``, a repeated one suffixed ``-1``, ``-2``...; and ``<a id=...>`` anchors."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # no headings in code blocks
    anchors, seen = set(re.findall(r'<a id="([^"]+)"', text)), {}
    for heading in re.findall(r"^#{1,6} (.+?)#*$", text, re.M):
        visible = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip()  # a link's text
        slug = re.sub(r"[^\w\- ]", "", visible.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_into_a_page_finds_its_anchor_as_plain_markdown():
    """mkdocs checks the site's anchors; these are GitHub's, where the pages are read as plain markdown."""
    dead = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md|)#([^)\s]+)\)", page.read_text()):
            file = (page.parent / target).resolve() if target else page
            if not file.is_file() or anchor not in github_anchors(file):
                dead.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not dead, "links whose anchor the page does not have on GitHub:\n" + "\n".join(dead)


# --- the runnable blocks of every page ---------------------------------------------------------------------
DOCS = ROOT / "docs"
RUNNABLE = [p for p in sorted(DOCS.rglob("*.md")) if any(b["kind"] == "run" for b in blocks(p))]
#: what the pages' blocks take as installed: the repository's plugins that they use, and the plugin skeleton
PLUGINS = [ROOT / "plugins" / "xt-optuna", ROOT / "examples" / "plugin_skeleton"]


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory) -> dict[str, Future]:
    """The runs of the pages this session tests, two at a time (the machine's two cores) from the start."""
    pages = {
        item.callspec.params["page"]
        for item in request.session.items
        if item.module is sys.modules[__name__]
        and "page" in getattr(getattr(item, "callspec", None), "params", {})
    }
    root = tmp_path_factory.mktemp("pages")
    site = root / "site-packages"  # the plugins installed as pip installs them (no build isolation: offline)
    sources = [shutil.copytree(p, root / "src" / p.name) for p in PLUGINS]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), *map(str, sources)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    pool = ThreadPoolExecutor(max_workers=2)
    request.addfinalizer(pool.shutdown)
    return {
        page: pool.submit(run_page, DOCS / page, root / page.replace("/", "-"), site)
        for page in sorted(pages)
    }


def run_page(page: Path, workdir: Path, site: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the page's runnable blocks in ``workdir`` (see tests/doc_blocks.py); the process and each block's
    output."""
    workdir.mkdir()
    spec = {"page": str(page.relative_to(DOCS)), "blocks": [b for b in blocks(page) if b["kind"] == "run"]}
    (workdir / ".blocks.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),  # this checkout, then the installed plugins
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),  # this env's xt
        "COLUMNS": "100",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("doc_blocks.py")), ".blocks.json"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    outputs = re.split(rf"^{SEPARATOR} \d+\n", proc.stdout, flags=re.M)[1:]
    return proc, outputs


@pytest.mark.slow
@pytest.mark.parametrize("page", [str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_runnable_blocks_of_the_page_run_and_print_what_it_shows(page, page_runs):
    proc, outputs = page_runs[page].result()
    assert proc.returncode == 0, f"{page}: {proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    marked = blocks(DOCS / page)
    runs = [b for b in marked if b["kind"] == "run"]
    for block, expected in zip(marked, marked[1:]):
        if expected["kind"] == "output":
            actual = outputs[runs.index(block)]
            assert shows(expected["code"], actual), (
                f"{page}:{expected['line']}: the block at line {block['line']} printed\n{actual}\nnot\n{expected['code']}"
            )


def test_shown_output_may_differ_in_numbers_spacing_and_elided_lines_only():
    shown = "epoch 1/3  lr 0.0010  6.9 s\n...\ntrain  2.2034    0.2458\nrun saved to runs/...\n"
    printed = "fast path: ...\nepoch 1/3 lr 0.0100 0.1 s\nx\ntrain 1.5 0.75\nrun saved to runs/demo\nbye\n"
    assert shows(shown, printed)
    assert not shows(shown, printed.replace("train", "val"))
    assert not shows("epoch 1/3", "epoch 1 of 3")


def test_markers_must_stand_right_before_a_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- run -->\n\n```python\nprint(1)\n```\n")
    with pytest.raises(ValueError, match="not right before a fenced block"):
        blocks(page)
    page.write_text("```python\nprint(1)\n```\n\n<!-- output -->\n```text\n1\n```\n")
    with pytest.raises(ValueError, match="follows no runnable block"):
        blocks(page)


# --- README ---------------------------------------------------------------------------------------------------------
def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_commands_are_make_targets():
    commands = re.findall(r"^make (\w+)", readme(), re.M)
    assert sorted(set(commands)) == ["demo", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, re.M), (
            f"`make {target}` is in the README but not the Makefile"
        )


def test_readme_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme(), re.S)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) <= 20, "the README has one short example"
    script = tmp_path / "readme_example.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + blocks[0])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "exp1" / "checkpoints" / "best.pt").is_file()


QUICKSTART = (DOCS / "quickstart.md").read_text()


def test_readme_links_into_the_docs_exist():
    for target in re.findall(r"\]\((docs/[^)#]+)", readme()):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


def test_make_demo_runs_twice_in_a_row_and_prints_what_the_quickstart_shows(tmp_path):
    # the demo recipe as the Makefile has it, on fewer images: a second `make demo` must not be refused
    recipe = re.search(r"^demo:.*\n\t\$\(BIN\)/(xt run .*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    command = [str(Path(sys.executable).with_name("xt")), *recipe.split()[1:], "--data-opt", "n_samples=64"]
    for _ in range(2):
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        shown = re.search(
            r"^`make demo` runs\n\n```bash\n(.*?)\n```\n.*?```text\n(.*?)```", QUICKSTART, re.M | re.S
        )
        assert shown.group(1) == recipe, "the quickstart shows another command than `make demo` runs"
        assert shows(shown.group(2), proc.stdout), proc.stdout
    assert json.loads((tmp_path / "runs" / "demo" / "history.json").read_text())
