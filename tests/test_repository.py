"""The repository polices itself: no large or generated files committed, no import circles, documentation
examples that go through lmft's own loader, a short README whose file tree and links stay true."""

from __future__ import annotations

import ast
import re
import subprocess

from conftest import REPO, STORE_NAMES

MAX_FILE_BYTES = 512 * 1024  # the largest files are docs pages (under 100 KB); data and models live outside git
README_MAX_LINES = 250  # the README is read in five minutes; reference material lives in docs/


def repository_files() -> list[str]:
    """Files git tracks or would add (untracked and not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


def test_no_large_file_is_committed():
    large = {p: (REPO / p).stat().st_size for p in repository_files() if (REPO / p).stat().st_size > MAX_FILE_BYTES}
    assert not large, f"files over {MAX_FILE_BYTES} bytes would be committed (keep data, models and stores out of git): {large}"


def test_no_mlflow_store_is_committed_and_stores_are_ignored():
    stores = [p for p in repository_files() if p.split("/")[-1] in STORE_NAMES or p.endswith(".db")
              or any(part in STORE_NAMES for part in p.split("/"))]
    assert not stores
    ignored = (REPO / ".gitignore").read_text().split()
    assert {"*.db", "mlartifacts/"} <= set(ignored)


def import_graph() -> dict[str, set[str]]:
    """lmft_core module -> the lmft_core modules it imports anywhere (deferred imports included; importing
    ``a.b.c`` also runs the packages ``a.b`` and ``a``)."""
    modules = {}
    for path in (REPO / "lmft_core").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for k in range(2, len(parts) + 1):
                    name = ".".join(parts[:k])
                    if name in modules and name != module and not module.startswith(name + "."):
                        graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycles_finds_a_circle_and_the_package_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "lmft_core.run_config" in graph["lmft_core.train.run"]  # deferred and top-level imports both seen
    assert cycles(graph) == []


def test_the_docs_load_models_through_lmfts_loader():
    pages = {p.name: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
    for name, text in pages.items():
        assert "mlflow.pytorch.load_model(" not in text, name  # a bare call reads or creates ./mlflow.db
    assert "from lmft_core.model_store import load_model" in pages["tracking.md"]


def readme_tree() -> list[str]:
    """The paths the README's file tree names, rebuilt from its indentation (``pipelines/full.py``, ...)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Files", 1)[1].split("```", 2)[1]
    paths, parents = [], []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        parents[depth:] = [name]
        paths.append("".join(parents))
    return paths


def test_the_readme_is_short_and_its_file_tree_names_every_module():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    tree = set(readme_tree())
    assert {"pipelines/full.py", "lmft_core/train/step.py", "lmft_core/profiles/", "docs/"} <= tree
    modules = {p for p in repository_files() if p.endswith(".py") and p.split("/")[0] in ("pipelines", "benchmarks")
               or (p.startswith("lmft_core/") and p.endswith(".py") and not p.endswith("__init__.py"))}
    assert not modules - tree, f"modules the README's file tree does not name: {sorted(modules - tree)}"
    assert not {p for p in tree if p.endswith(".py")} - modules, "the README's file tree names modules that do not exist"


def test_every_docs_page_is_in_the_readme_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert all(f"(docs/{name}" in readme for name in pages), "a docs page the README's index does not list"
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), (page.name, target)


def test_ci_runs_the_readmes_test_command():
    """.ci/run is the README's Quickstart command 2 (install with the test extra, then ``pytest -q``) after the lint."""
    readme = (REPO / "README.md").read_text()
    command = readme.split("# 2. install and run the tests\n", 1)[1].splitlines()[0]
    install, test = command.rsplit(" && ", 1)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test == "pytest -q" and test in ci
    assert any(line.startswith(install) for line in ci), (install, ci)
