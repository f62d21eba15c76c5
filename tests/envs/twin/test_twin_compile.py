"""The compile step (envs/twin/compile.py): cache location, compiler lookup, old import paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pulsebms.envs.twin import compile as twin_compile
from pulsebms.envs.twin import physics
from pulsebms.envs.twin.parameters import cell_facts


@pytest.mark.parametrize(
    "name",
    [
        "CompiledCell",
        "INPUT_NAMES",
        "MODEL_OPTIONS",
        "OUTPUT_NAMES",
        "PHYSICS_MODELS",
        "STEPPER_TOLERANCE",
        "c_compiler",
        "compiled_cell",
        "jit_cache_dir",
        "quiet_native_output",
        "static_inputs",
    ],
)
def test_physics_keeps_re_exporting_the_compile_names(name: str) -> None:
    assert getattr(physics, name) is getattr(twin_compile, name)
    assert name in physics.__all__


def test_jit_cache_dir_prefers_pulsebms_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PULSEBMS_CACHE_DIR", str(tmp_path / "own"))
    assert twin_compile.jit_cache_dir() == tmp_path / "own" / "jit"
    monkeypatch.delenv("PULSEBMS_CACHE_DIR")
    assert twin_compile.jit_cache_dir() == tmp_path / "xdg" / "pulsebms" / "jit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert twin_compile.jit_cache_dir() == Path.home() / ".cache" / "pulsebms" / "jit"


def test_no_compiler_means_no_jit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twin_compile.shutil, "which", lambda name: None)
    assert twin_compile.c_compiler() is None
    assert twin_compile._jit_compile(object()) is None


@pytest.mark.parametrize("chem", ["LFP", "NMC", "LCO"])
def test_static_inputs_are_rest_concentrations_and_kelvin(chem: str) -> None:
    soc = np.array([0.0, 0.5, 1.0])
    temperature_c = np.array([-10.0, 25.0, 45.0])
    statics = twin_compile.static_inputs(chem, soc, temperature_c)
    facts = cell_facts(chem)
    x, y = facts.stoichiometries(soc)
    assert statics.shape == (3, 3)
    np.testing.assert_array_equal(statics[0], x * facts.c_n_max_mol_m3)
    np.testing.assert_array_equal(statics[1], y * facts.c_p_max_mol_m3)
    np.testing.assert_array_equal(statics[2], temperature_c + 273.15)
