"""Every module's runnable ``Example:`` sections stay true (one test per module).

The modules are found by walking the package's folders (``pkgutil``), not from a hand
list, so a new module is covered the day it lands. Under an editable install the folders
come from ``[tool.setuptools.package-dir]`` in pyproject.toml (the subpackages are mapped
folders that ``pulsebms.__path__`` does not contain); under a regular install from
``pulsebms.__path__``. Modules that need the heavy optional stack (PyBaMM, torch, SB3) are
run too: the dev environment has everything.

Examples that cannot run anywhere (a CAN interface, a file on a device) carry
``# doctest: +SKIP``; keep those few.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import pulsebms

ROOT = Path(__file__).resolve().parents[1]
OPTIONFLAGS = doctest.ELLIPSIS


def _package_roots() -> dict[str, list[str]]:
    """Package name → folders holding its modules, for every root the install maps."""
    roots: dict[str, list[str]] = {"pulsebms": list(pulsebms.__path__)}
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
        for name, folder in mapping.items():
            if (ROOT / folder).is_dir():
                roots.setdefault(name, []).append(str(ROOT / folder))
    return roots


def _walk(package: str, folders: list[str]) -> Iterator[str]:
    """``package`` and every module below it, found without importing anything."""
    yield package
    for info in pkgutil.iter_modules(folders):
        name = f"{package}.{info.name}"
        if info.ispkg:
            yield from _walk(name, [str(Path(f) / info.name) for f in folders])
        else:
            yield name


def package_modules() -> list[str]:
    """Dotted names of every module of the package, sorted."""
    names: set[str] = set()
    for package, folders in _package_roots().items():
        names.update(_walk(package, folders))
    return sorted(names)


MODULES = package_modules()


def test_walk_finds_the_subpackages() -> None:
    for name in ("pulsebms.core.types", "pulsebms.safety.shield", "pulsebms.envs.twin.physics"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report: list[str] = []
    for test in finder.find(module, name):
        try:
            runner.run(test, out=report.append)
        finally:
            test.globs.clear()
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0, "".join(report)
