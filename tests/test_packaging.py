"""The distribution's shape: one top-level name, subpackages, typed, extras kept honest."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
SUBPACKAGES = sorted(name.removeprefix("pulsebms.") for name in PACKAGE_DIR if name != "pulsebms")
"""Every subpackage the distribution maps (``envs``, ``envs.twin``, ...), from pyproject.toml."""
REQUIRED = {"core", "envs", "safety", "agents", "experiments", "configs", "export", "edge_runtime"}
HEAVY = ("torch", "pybamm", "ray", "gymnasium", "hydra", "stable_baselines3", "casadi", "cvxpy")


def test_package_list_matches_package_dir() -> None:
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == set(PACKAGE_DIR)
    assert set(SUBPACKAGES) >= REQUIRED
    for name, folder in PACKAGE_DIR.items():
        assert (ROOT / folder / "__init__.py").is_file(), name


def test_typecheck_covers_every_top_level_subpackage() -> None:
    """``make type`` (and the pre-commit hook) links these folders: none may be missing."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (line,) = re.findall(r"^PACKAGES := (.*)$", makefile, flags=re.M)
    tops = {folder for name, folder in PACKAGE_DIR.items() if name.count(".") == 1}
    assert set(line.split()) == tops


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_import_under_one_top_level_name(name: str) -> None:
    module = importlib.import_module(f"pulsebms.{name}")
    assert module.__name__ == f"pulsebms.{name}"


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build a regular (non-editable) wheel of the checkout and unpack-install it."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("pulsebms-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, target


def test_wheel_installs_one_top_level_name(wheel_install: tuple[Path, Path]) -> None:
    wheel, _ = wheel_install
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pulsebms"}
    assert "pulsebms/py.typed" in names
    assert "pulsebms/safety/state.py" in names
    # Package data every user path needs: Hydra configs, cell tables, the project DBC.
    assert "pulsebms/configs/config.yaml" in names
    assert any(n.startswith("pulsebms/configs/experiment/") for n in names)
    assert "pulsebms/safety/data/cell_tables.json" in names
    assert "pulsebms/edge_runtime/data/pulsebms.dbc" in names


def test_regular_install_imports_every_subpackage(wheel_install: tuple[Path, Path]) -> None:
    _, target = wheel_install
    code = (
        "import importlib, pulsebms\n"
        f"for n in {SUBPACKAGES!r}: importlib.import_module('pulsebms.' + n)\n"
        "print(pulsebms.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=target,
        timeout=300,
    ).stdout
    assert out.strip().startswith(str(target))


def test_py_typed_ships() -> None:
    assert importlib.resources.files("pulsebms").joinpath("py.typed").is_file()


def _extra_requirements(extra: str) -> list[str]:
    requires = md.requires("pulsebms") or []
    marker = re.compile(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]")
    return [r.split(";")[0].strip() for r in requires if marker.search(r)]


def test_edge_extra_pulls_no_heavy_dependency() -> None:
    edge = _extra_requirements("edge")
    assert edge, "the edge extra must exist"
    names = {re.split(r"[\s\[<>=!~]", r, maxsplit=1)[0].lower() for r in edge}
    assert names == {"onnxruntime", "python-can", "cantools"}
    assert not names & {"torch", "pybamm", "ray", "gymnasium", "hydra-core"}


def _imports_of(code: str) -> tuple[set[str], set[str]]:
    """Third-party top-level names and ``pulsebms`` modules that ``code`` loads (fresh process)."""
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    tops = {m.split(".")[0] for m in loaded}
    third_party = {t for t in tops if t not in sys.stdlib_module_names and t != "pulsebms"}
    return third_party, {m for m in loaded if m.split(".")[0] == "pulsebms"}


def _within(modules: set[str], *packages: str) -> set[str]:
    """The modules of ``modules`` outside ``pulsebms`` itself and ``packages``."""
    return {
        m
        for m in modules
        if m != "pulsebms" and not any(m == p or m.startswith(p + ".") for p in packages)
    }


def test_safety_imports_numpy_and_core_only() -> None:
    third_party, ours = _imports_of("import pulsebms.safety")
    assert third_party <= {"numpy"}, third_party
    assert not _within(ours, "pulsebms.safety", "pulsebms.core")
    assert not third_party & set(HEAVY)


def test_core_imports_numpy_only() -> None:
    code = (
        "import pkgutil, importlib, pulsebms.core\n"
        "for m in pkgutil.walk_packages(pulsebms.core.__path__, 'pulsebms.core.'):\n"
        "    importlib.import_module(m.name)"
    )
    third_party, ours = _imports_of(code)
    assert third_party <= {"numpy"}, third_party
    assert not _within(ours, "pulsebms.core")
    assert "pulsebms.core.types" in ours
