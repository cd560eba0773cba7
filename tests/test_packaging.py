"""Every third-party module the shipped packages import is a declared runtime dependency.

`make demo` installs only the runtime dependencies, so a module imported at run time but listed
only in the test extra breaks the Quick start while the suite (with the test extra) stays green.
"""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("klaviyo_source", "klaviyo_sandbox", "klaviyo_dlt")
# imported only by klaviyo_dlt.airflow (the optional Airflow extra) and Airflow helper paths
OPTIONAL = {"airflow"}
# pytest plugin shipped for users' own test suites (loaded by pytest, so pytest is there)
TEST_TOOLING = {"conformance_plugin.py"}


def _declared_runtime() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        names.add(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def _top_level_imports() -> set[str]:
    modules: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name in TEST_TOOLING:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(PACKAGES) - set(sys.stdlib_module_names) - OPTIONAL - {"__future__"}


def test_runtime_imports_are_declared_dependencies():
    declared = _declared_runtime()
    # dlt[...] brings these in itself; they are dlt's own dependencies, not ours to pin
    provided_by_dlt = {"dlt", "tenacity", "pyyaml", "psycopg2", "psycopg2-binary", "pyarrow", "requests", "pendulum", "urllib3"}
    distributions = packages_distributions()
    undeclared = []
    for module in sorted(_top_level_imports()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & (declared | provided_by_dlt):
            undeclared.append(f"{module} (from {', '.join(sorted(dists))})")
    assert not undeclared, f"imported at run time but not in [project].dependencies: {undeclared}"


def test_license_file_matches_the_declared_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert "LICENSE" in project.get("license-files", ["LICENSE"])


def _requirement_lines(text: str, key: str) -> list[tuple[str, list[str]]]:
    """(requirement, its comment lines just above it or on its line) for one dependency array."""
    lines = text.split(f"\n{key} = [", 1)[1].split("\n]", 1)[0].splitlines()
    found, comments = [], []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
        elif stripped.startswith('"'):
            requirement, rest = stripped.split('"')[1], stripped.split('"', 2)[2]
            found.append((requirement, comments + ([rest.split("#", 1)[1]] if "#" in rest else [])))
            comments = []
    return found


def test_every_pinned_dependency_says_why():
    text = (ROOT / "pyproject.toml").read_text()
    pinned = [(req, why) for req, why in _requirement_lines(text, "dependencies")
              if re.search(r"[<>=~]", req)]
    assert pinned and all(why for _, why in pinned), [req for req, why in pinned if not why]


def test_dlt_range_spans_more_than_one_minor():
    """A single-minor pin clashes with the dlt version of the project it is installed into."""
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [r for r in project["dependencies"] if r.startswith("dlt")]
    spec = SpecifierSet(requirement.split("]", 1)[1])
    import dlt

    assert dlt.__version__ in spec
    minors = {f"1.{minor}.0" for minor in range(0, 60)}
    assert len([v for v in minors if v in spec]) > 1, requirement


def test_the_airflow_dags_ship_in_the_package():
    """`pip install "klaviyo-dlt[airflow]"` brings the DAG code; the DAG file in pipelines/ only imports it."""
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(str(ROOT), include=config["include"])
    assert {"klaviyo_dlt", "klaviyo_source", "klaviyo_sandbox"} <= set(shipped)
    dag_file = (ROOT / "pipelines" / "klaviyo_airflow_dag.py").read_text()
    imports = [n for n in ast.walk(ast.parse(dag_file)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [getattr(n, "module", None) for n in imports] == ["klaviyo_dlt.airflow"]
