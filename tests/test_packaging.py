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
import zipfile
from pathlib import Path

import pytest

SUBPACKAGES = [
    "envs",
    "safety",
    "agents",
    "experiments",
    "configs",
    "export",
    "edge_runtime",
]
HEAVY = ("torch", "pybamm", "ray", "gymnasium", "hydra", "stable_baselines3", "casadi", "cvxpy")


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


def test_safety_core_is_numpy_only() -> None:
    code = "import json, sys\nimport pulsebms.safety\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)
