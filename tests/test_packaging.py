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
    assert names == {"onnxruntime", "python-can", "cantools", "paho-mqtt"}
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


# ---------------------------------------------------------------- console scripts

SCRIPTS_DECLARED: dict[str, str] = PYPROJECT["project"]["scripts"]
EDGE_ONLY_ABSENT = (
    *HEAVY,
    "omegaconf",
    "scipy",
    "pandas",
    "onnx",
    "onnxscript",
    "matplotlib",
    "demandlib",
    "pvlib",
    "tqdm",
    "rich",
    "wandb",
    "tensorboard",
)
"""What a ``pip install 'pulsebms[edge]'`` lacks: imports of these fail in the probe."""

_EDGE_ONLY = """\
import importlib, importlib.abc, sys
ABSENT = set({absent!r})
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Absent())
module, _, function = {target!r}.partition(":")
sys.argv = [{script!r}, *{argv!r}]
sys.exit(getattr(importlib.import_module(module), function)())
"""


def _run_edge_only(script: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a console script's declared target as its wrapper would, in an edge-only shape."""
    code = _EDGE_ONLY.format(
        absent=EDGE_ONLY_ABSENT, target=SCRIPTS_DECLARED[script], script=script, argv=argv
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", dist.strip(), maxsplit=1)[0]).lower()


def _declared_extra(extra: str) -> set[str]:
    """Distributions an extra of pyproject.toml installs, nested ``pulsebms[...]`` expanded."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][extra]:
        nested = re.fullmatch(r"pulsebms\[([\w,]+)\]", req.strip())
        if nested:
            for inner in nested.group(1).split(","):
                out |= _declared_extra(inner)
        else:
            out.add(_normalize(req))
    return out


def test_every_console_script_goes_through_the_guard() -> None:
    from pulsebms.core import console_scripts

    assert set(console_scripts.SCRIPTS) == set(SCRIPTS_DECLARED)
    for name, target in SCRIPTS_DECLARED.items():
        module, _, function = target.partition(":")
        assert module == "pulsebms.core.console_scripts", name
        assert callable(getattr(console_scripts, function))
        script = console_scripts.SCRIPTS[name]
        assert set(script.extras) <= set(console_scripts.EXTRAS)
        real_module, _, real_function = script.target.partition(":")
        assert callable(getattr(importlib.import_module(real_module), real_function)), name


def test_extras_table_matches_pyproject() -> None:
    from pulsebms.core.console_scripts import EXTRAS, IMPORT_NAMES

    for extra, dists in EXTRAS.items():
        assert dists == _declared_extra(extra), extra
    every = set().union(*EXTRAS.values())
    assert set(IMPORT_NAMES.values()) <= every
    assert {"torch", "hydra", "pybamm", "gymnasium", "ray", "onnx"} <= set(IMPORT_NAMES)


def test_missing_extra_message_names_the_extra_that_installs_the_module() -> None:
    from pulsebms.core.console_scripts import missing_extra_message

    def message(script: str, name: str | None) -> str | None:
        return missing_extra_message(
            script, ModuleNotFoundError(f"No module named {name}", name=name)
        )

    assert message("pulsebms-train", "hydra.utils") == (
        "pulsebms-train needs the 'train' extra: pip install 'pulsebms[train]' "
        "(missing module 'hydra')"
    )
    assert "'rllib' extra" in str(message("pulsebms-train", "ray.rllib"))
    assert "'sim' extra" in str(message("pulsebms-export", "gymnasium"))
    assert "'train' extra" in str(message("pulsebms-export", "stable_baselines3"))
    assert "'edge' extra" in str(message("pulsebms-bench", "cantools"))
    assert "'train' extra" in str(message("pulsebms-eval", "yaml"))  # a dependency's dependency
    # Not an extra's business: our own modules, the standard library, an unnamed error.
    assert message("pulsebms-edge", "pulsebms.edge_runtime.nope") is None
    assert message("pulsebms-edge", "sqlite3") is None
    assert message("pulsebms-edge", None) is None


@pytest.mark.parametrize(
    ("script", "argv", "extra"),
    [
        ("pulsebms-demo", ["--timesteps", "1", "--out", "demo"], "train"),
        ("pulsebms-train", ["experiment=quick"], "train"),
        ("pulsebms-eval", [], "train"),
        ("pulsebms-export", ["model.zip", "--out", "deploy", "--env-id", "X"], "export"),
        ("pulsebms-hil", ["--manifest", "manifest.json"], "sim"),
        ("pulsebms-bench", ["twin", "--quick"], "sim"),
        ("pulsebms-health", ["metrics", "--quick"], "services"),
    ],
)
def test_edge_only_install_names_the_extra(
    script: str, argv: list[str], extra: str, tmp_path: Path
) -> None:
    """Without the heavy stack every other command says what to install: one line, exit 2."""
    done = _run_edge_only(script, argv, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(
        rf"{script} needs the '{extra}' extra: pip install 'pulsebms\[{extra}\]' "
        r"\(missing module '\w+'\)",
        line,
    ), line
    assert not any(tmp_path.iterdir())  # nothing started


def test_edge_only_install_runs_the_edge(tmp_path: Path) -> None:
    """``pulsebms-edge`` needs nothing beyond the edge extra: it runs a policy on a bus."""
    sys.path.insert(0, str(ROOT / "tests" / "edge_runtime"))
    try:
        from edge_helpers import constant_onnx, make_manifest
    finally:
        sys.path.remove(str(ROOT / "tests" / "edge_runtime"))

    from pulsebms.edge_runtime.manifest import sha256_bytes

    model = constant_onnx(8, 3, 0.25)
    (tmp_path / "policy.onnx").write_bytes(model)
    make_manifest(sha256=sha256_bytes(model)).save(tmp_path / "manifest.json")
    assert _run_edge_only("pulsebms-edge", ["--help"], tmp_path).returncode == 0
    argv = ["--manifest", "manifest.json", "--interface", "virtual", "--channel", "edge-only"]
    done = _run_edge_only("pulsebms-edge", [*argv, "--tick-s", "0.005", "--n-ticks", "3"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ticks"] == 3.0
