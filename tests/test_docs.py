"""The documentation cannot drift: generated pages equal what their scripts write now, every
page the site's nav or README links to exists, and no page cites a spec outside the repo."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_script(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_parser():
    gen = _load_script("scripts/gen_docs.py")
    text = gen.render()
    assert "## ddm condense" in text and "--iterations" in text
    committed = (ROOT / "docs" / "cli.md").read_text()
    # argparse wraps help text slightly differently across Python versions: compare the words
    assert committed.split() == text.split(), (
        "docs/cli.md is out of date: run python scripts/gen_docs.py"
    )


def test_cli_reference_lists_every_subcommand():
    from ddm.cli import build_parser

    gen = _load_script("scripts/gen_docs.py")
    names = [name for name, _, _ in gen._subcommands(build_parser())]
    assert "condense" in names and "evaluate" in names
    text = gen.render()
    for name in names:
        assert f"## ddm {name}\n" in text


@pytest.mark.parametrize("name", ["index.md", "ddm-vs-dm.md", "idm.md", "precision.md"])
def test_results_pages_are_generated_from_the_json(name):
    render = _load_script("benchmarks/render_results.py")
    pages = render.render()
    committed = (ROOT / "docs" / "results" / name).read_text()
    assert committed == pages[name], (
        f"docs/results/{name} is out of date: run python benchmarks/render_results.py"
    )


def test_every_results_page_is_committed():
    render = _load_script("benchmarks/render_results.py")
    for name, text in render.render().items():
        path = ROOT / "docs" / "results" / name
        assert path.exists() and path.read_text() == text, f"{path} differs from the JSON"


def test_results_page_changes_with_its_json(tmp_path, monkeypatch):
    """The renderer reads the numbers, not a copy: a changed JSON gives a changed page."""
    render = _load_script("benchmarks/render_results.py")
    for f in render.RESULTS.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    data = (tmp_path / "table_c.json").read_text().replace("53.96", "99.96", 1)
    (tmp_path / "table_c.json").write_text(data)
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    assert render.render()["ipc50.md"] != (ROOT / "docs" / "results" / "ipc50.md").read_text()


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


class _AnyTagLoader(yaml.SafeLoader):
    """mkdocs.yml may hold !!python/name tags (markdown extensions); they are not needed here."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def test_every_nav_page_exists():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_AnyTagLoader)
    assert config["docs_dir"] == "docs"
    pages = _nav_pages(config["nav"])
    assert "method.md" in pages and "cli.md" in pages
    for page in pages:
        assert (ROOT / "docs" / page).exists(), f"mkdocs.yml's nav names a missing page: {page}"


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert "docs/method.md" in local
    for link in local:
        assert (ROOT / link).exists(), f"README.md links to a missing file: {link}"


def test_method_page_has_the_headings_code_cites():
    text = (ROOT / "docs" / "method.md").read_text()
    for heading in (
        "Networks",
        "DSA",
        "DM",
        "DDM, paper form",
        "DDM, released form",
        "IDM",
        "Evaluation protocol",
        "Continual learning",
        "Datasets",
        "Deliberate differences from the reference code",
    ):
        assert f"\n## {heading}\n" in text, heading


# Development history (numbered sessions and issues, in any case) and the outside spec's file
# name in capitals; the repo's own page, docs/method.md, is what to cite.
OUTSIDE = re.compile(r"(?i:sessions? [0-9]|issue [0-9])|\.\./shared/docs|METHOD\.md")


def test_no_page_or_source_cites_history_or_an_outside_spec():
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml"]
    for folder, pattern in (
        ("docs", "*.md"),
        ("src", "*.py"),
        ("src", "*.json"),
        ("tests", "*.py"),
    ):
        files += sorted((ROOT / folder).rglob(pattern))
    for folder in ("benchmarks",):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file()]
    hits = []
    for path in files:
        if not path.exists() or path.suffix in (".png", ".pyc"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite docs/method.md, not history or an outside spec:\n" + "\n".join(hits)
