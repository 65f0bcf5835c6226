"""Packaging as a user meets it: the distribution name in every install line, the quick
start's commands, and the Docker image's build recipe.

The name ``pgqueue`` on PyPI belongs to an unrelated project, so ``pip install pgqueue``
installs something else: every install line must name this project's distribution.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

try:
    import tomllib
except ImportError:                      # Python 3.10
    tomllib = pytest.importorskip("tomli")

DIST = "pgqueue-jobs"
#: files a user reads or runs to install pgqueue
SOURCES = [
    ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Dockerfile",
    ROOT / "docker-compose.yml", ROOT / ".ci" / "run",
    *sorted(p for p in (ROOT / "examples").rglob("*")
            if p.is_file() and "node_modules" not in p.parts
            and p.suffix in {".py", ".md", ".sql", ".js", ".json", ".txt", ".sh", ""}),
    *sorted((ROOT / "pgqueue").rglob("*.py")),
]
PIP_INSTALL = re.compile(r"pip3?\s+install\s+(?P<rest>[^`\n]*)")
SHELL_END = {"&&", "||", ";", "|"}
#: words that end a command quoted in a sentence ("pip install -e . in a checkout")
PROSE_END = {"in", "and", "or", "then", "to", "for", "with", "from", "on", "inside"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def install_targets(line: str) -> list[str]:
    """The requirement arguments of one ``pip install ...`` (options and their values
    dropped; a shell operator ends the command)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:                    # an unbalanced quote in prose
        words = line.split()
    targets, skip_next = [], False
    for w in words:
        if w in SHELL_END or w.endswith(";") or w in PROSE_END:
            break
        if skip_next:
            skip_next = False
            continue
        if w in {"-r", "--requirement", "-c", "--constraint", "-t", "--target",
                 "--index-url", "-i", "--extra-index-url", "--prefix", "--root"}:
            skip_next = True
            continue
        if w.startswith("-"):
            continue
        targets.append(w.strip("'\"").rstrip(",;)").rstrip("."))
    return [t for t in targets if t]


def install_lines() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in SOURCES:
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in PIP_INSTALL.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{n}", m.group(0),
                              install_targets(m.group("rest"))))
    return found


def test_distribution_name_and_import_package():
    meta = pyproject()["project"]
    assert meta["name"] == DIST
    assert meta["scripts"] == {"pgqueue": "pgqueue.cli:main"}
    assert "pgqueue" in pyproject()["tool"]["setuptools"]["packages"]


def test_extras_refer_to_the_project_by_its_own_name():
    meta = pyproject()["project"]
    own = {canonicalize_name(DIST), "pgqueue"}
    refs = []
    for extra, reqs in meta["optional-dependencies"].items():
        for r in reqs:
            req = Requirement(r)
            if canonicalize_name(req.name) in own:
                refs.append((extra, req))
    assert refs, "the test extra installs the other extras through the project itself"
    for extra, req in refs:
        assert req.name == DIST, f"extra {extra!r} refers to {req}"
        assert req.extras <= set(meta["optional-dependencies"]), req


def test_every_install_line_names_this_distribution():
    lines = install_lines()
    assert any(loc.startswith("README.md") for loc, _, _ in lines)
    assert any(loc.startswith("Dockerfile") for loc, _, _ in lines)
    wrong = []
    for loc, text, targets in lines:
        for t in targets:
            if t.startswith((".", "/", "~")) or "://" in t:      # a checkout or a URL
                continue
            try:
                name = Requirement(t).name
            except InvalidRequirement:
                continue
            if canonicalize_name(name).startswith("pgqueue") and name != DIST:
                wrong.append(f"{loc}: {text}")
    assert not wrong, "install lines naming another distribution:\n" + "\n".join(wrong)


def test_no_extra_is_named_after_the_old_distribution():
    """``pgqueue[metrics]`` in prose or an error message sends users to the wrong package."""
    old = re.compile(r"(?<![\w.-])pgqueue\[")
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in SOURCES + [ROOT / "pyproject.toml"] if p.exists()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if old.search(line)]
    assert not hits, "\n".join(hits)


def test_install_line_checker_catches_the_old_name():
    """The check above would notice a bare ``pip install pgqueue``."""
    def targets(text: str) -> list[str]:
        return [t for m in PIP_INSTALL.finditer(text) for t in install_targets(m["rest"])]

    assert targets("pip install pgqueue") == ["pgqueue"]
    assert targets("`pip install 'pgqueue[embedded]' && python x.py`") == ["pgqueue[embedded]"]
    assert targets("RUN pip install --no-cache-dir -e '.[test]'") == [".[test]"]
    assert targets("pip install -e '.[embedded]' in a checkout") == [".[embedded]"]
    assert Requirement("pgqueue[embedded]").name != DIST


def test_readme_says_to_install_from_a_checkout_until_released():
    readme = (ROOT / "README.md").read_text()
    assert f"`{DIST}`" in readme
    assert re.search(r"no\s+release\s+(is|has\s+been)\s+published|not\s+(yet\s+)?(published|released)",
                     readme, re.I), "the README says that no release exists yet"
    assert "from a checkout" in readme
