"""Packaging as a user meets it: the distribution name in every install line, the quick
start's commands, and the Docker image's build recipe.

The name ``pgqueue`` on PyPI belongs to an unrelated project, so ``pip install pgqueue``
installs something else: every install line must name this project's distribution.
"""

from __future__ import annotations

import re
import shlex

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


# -- the Docker image (docker-compose.yml builds it) -----------------------------------


def dockerfile_steps() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile step, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            steps.append((op.upper(), rest.strip()))
    return steps


def test_dockerfile_installs_dependencies_before_copying_the_source():
    steps = dockerfile_steps()
    copies = [(i, rest) for i, (op, rest) in enumerate(steps) if op == "COPY"]
    source = [i for i, rest in copies if rest.split()[0] == "."]
    assert len(source) == 1, copies
    first = copies[0]
    assert first[0] < source[0] and first[1].split()[0] == "pyproject.toml", \
        "pyproject.toml is copied alone before the source"
    between = [rest for op, rest in steps[first[0]:source[0]] if op == "RUN"]
    assert any("pip" in r and "pyproject.toml" in r for r in between), \
        "the dependencies are installed from pyproject.toml before the source is copied"
    for r in between:                       # the inline program at least compiles
        m = re.search(r'python3? -c "(?P<code>[^"]*)"', r)
        if m:
            compile(m["code"], "Dockerfile", "exec")
    after = [rest for op, rest in steps[source[0]:] if op == "RUN"]
    assert any(re.search(r"pip install .*\.\[[^]]*metrics", r) for r in after), after


def test_dockerfile_installs_the_metrics_extra_the_compose_file_uses():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "--metrics-port" in compose
    deps_step = " ".join(rest for op, rest in dockerfile_steps() if op == "RUN")
    assert "'metrics'" in deps_step or '"metrics"' in deps_step, \
        "the dependency layer installs the metrics extra's packages"


def test_dockerfile_runs_as_a_non_root_user():
    steps = dockerfile_steps()
    users = [i for i, (op, _) in enumerate(steps) if op == "USER"]
    assert users, "no USER instruction: the services would run as root"
    last = users[-1]
    user = steps[last][1].split(":")[0]
    assert user not in {"root", "0"}
    assert not any(op == "USER" and rest.split(":")[0] in {"root", "0"}
                   for op, rest in steps[last:])
    assert any(op == "RUN" and "useradd" in rest and rest.split()[-1] == user
               for op, rest in steps[:last]), "the user is created in the image"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in ("examples/node/node_modules", ".venv", ".git", "**/__pycache__",
                  ".pytest_cache", "*.egg-info"):
        assert entry in ignored, entry


def test_every_subpackage_is_packaged():
    """The image installs a built wheel, not the checkout: a package missing from
    pyproject.toml's list would be missing there."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "pgqueue").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"
