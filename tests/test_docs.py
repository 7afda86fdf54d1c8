"""The documentation stays true: the site builds with ``mkdocs build --strict`` (a broken
link, anchor or API reference fails it), the Python examples of README.md and docs/ run,
every link of README.md and docs/ reaches a file and a heading that exist, and every module of
amnp has its API page and its row in the README's and docs/library.md's module tables."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.M | re.S)


EXAMPLES = [(path, i) for path in PAGES for i, _ in enumerate(python_blocks(path))]


def test_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed: python -m pip install -e ".[docs]"')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "api" / "config" / "index.html").read_text(encoding="utf-8")
    assert "build_head" in reference and "TrainConfig" in reference
    assert "MarginHead" in (tmp_path / "site" / "api" / "heads" / "index.html").read_text(encoding="utf-8")


def test_readme_has_an_example():
    assert python_blocks(ROOT / "README.md")


@pytest.mark.parametrize("path, index", EXAMPLES,
                         ids=[f"{path.relative_to(ROOT)}-{index}" for path, index in EXAMPLES])
def test_python_example_runs(path, index):
    code = python_blocks(path)[index]
    exec(compile(code, f"{path.relative_to(ROOT)}, python block {index}", "exec"), {"__name__": "__example__"})


def anchors(path: Path) -> set[str]:
    """The anchors a page defines: explicit ``<a id>`` tags and its headings, slugged as GitHub
    does (lower case, punctuation dropped, each space a hyphen), which for these headings is also
    what MkDocs makes of them."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    found = set(re.findall(r'<a id="([\w-]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(path.relative_to(ROOT)) for path in PAGES])
def test_links_reach_a_file_and_heading(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no heading or anchor #{anchor} in {linked.name}")
    assert not broken, broken


def public_modules() -> set[str]:
    package = ROOT / "amnp"
    modules = {path.stem for path in package.glob("*.py") if not path.stem.startswith("_")}
    return modules | {path.parent.name for path in package.glob("*/__init__.py")}


def test_every_module_is_documented():
    modules = public_modules()
    assert {"checkpoint", "validation", "init", "functional", "data"} <= modules
    api_pages = {path.stem for path in (DOCS / "api").glob("*.md")}
    assert api_pages == modules
    for name in modules:
        assert f"::: amnp.{name}" in (DOCS / "api" / f"{name}.md").read_text(encoding="utf-8")
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert set(re.findall(r"^\s+- amnp\.(\w+): api/\1\.md$", nav, flags=re.M)) == modules
    readme_rows = set(re.findall(r"^\| `amnp\.(\w+)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.M))
    assert readme_rows == modules
    library_rows = set(re.findall(r"^\| \[`amnp\.(\w+)`\]\(api/\1\.md\) \|",
                                  (DOCS / "library.md").read_text(encoding="utf-8"), flags=re.M))
    assert library_rows == modules


def imported_modules(path: Path) -> set[str]:
    """The amnp modules (top-level names: "config", "data", ...) that the file ``path`` of amnp
    imports, from its relative imports."""
    import ast

    package = path.relative_to(ROOT).parent.parts  # ("amnp",) or ("amnp", "data")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + tuple(node.module.split(".")) if node.module else None
            if target is None:  # from . import a, b
                found.update(base[1] if len(base) > 1 else alias.name for alias in node.names)
            elif len(target) > 1:
                found.add(target[1])
    return found


def test_every_module_imports_only_modules_above_it_in_the_readme_table():
    """The layering the README's developer notes describe: no upward arrow, so no cycle."""
    order = re.findall(r"^\| `amnp\.(\w+)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.M)
    upward = []
    for position, name in enumerate(order):
        package = ROOT / "amnp" / name
        for path in sorted(package.glob("*.py")) if package.is_dir() else [package.with_suffix(".py")]:
            below = sorted(module for module in imported_modules(path) - {name} if module not in order[:position])
            upward += [f"{path.relative_to(ROOT)} imports amnp.{module}" for module in below]
    assert not upward, upward
