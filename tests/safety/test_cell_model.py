"""The one-step cell model and its tables (regression + a re-generation check)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from safety_strategies import cell_model

from pulsebms.safety import CELL_VOLTAGE_WINDOWS_V, CellModel
from pulsebms.safety.cell_model import default_tables_path


def _doc() -> dict:
    return json.loads(default_tables_path().read_text(encoding="utf-8"))


def test_tables_cover_every_chemistry_with_its_window() -> None:
    model = cell_model()
    assert set(model.chemistries) == set(CELL_VOLTAGE_WINDOWS_V)
    for chem, (v_min, v_max) in CELL_VOLTAGE_WINDOWS_V.items():
        ocv = model.ocv_v(chem, np.array([0.0, 1.0]))
        assert ocv == pytest.approx([v_min, v_max], abs=1e-6)
        grid = np.linspace(0, 1, 1001)
        assert np.all(np.diff(model.ocv_v(chem, grid)) > 0)


def test_resistance_is_positive_and_grows_with_duration_and_cold() -> None:
    model = cell_model()
    for chem in model.chemistries:
        for direction in ("discharge", "charge"):
            short = model.resistance_ohm(chem, 0.5, 25.0, 1.0, direction)
            long = model.resistance_ohm(chem, 0.5, 25.0, 1000.0, direction)
            cold = model.resistance_ohm(chem, 0.5, -10.0, 1.0, direction)
            assert 0.0 < short <= long
            assert cold > short
    with pytest.raises(ValueError, match="direction"):
        model.resistance_ohm("NMC", 0.5, 25.0, 10.0, "sideways")


def test_one_step_prediction_and_closed_form_inverse_agree() -> None:
    model = cell_model()
    v = model.terminal_voltage_v("NMC", 0.5, 25.0, 2.0, duration_s=10.0)
    i = model.current_for_voltage_a("NMC", 0.5, 25.0, v, duration_s=10.0)
    # The inverse uses the OCV at the start; over 10 s at 2 A the SoC moves 0.1 %.
    assert float(i) == pytest.approx(2.0, rel=0.05)
    assert model.terminal_voltage_v("NMC", 0.5, 25.0, 0.0) == pytest.approx(model.ocv_v("NMC", 0.5))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("ocv_soc_grid"), "missing"),
        (lambda d: d.__setitem__("temperature_grid_c", [0.0, 1.0, 5.0]), "uniformly"),
        (lambda d: d["chemistries"]["NMC"].__setitem__("ocv_v", [1.0] * 101), "increase"),
        (
            lambda d: d["chemistries"]["LFP"]["resistance_charge_ohm"][0][0].__setitem__(0, -1.0),
            "positive",
        ),
    ],
)
def test_malformed_tables_raise(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(ValueError, match=match):
        CellModel(doc)


def test_unknown_chemistry_names_known_ones() -> None:
    with pytest.raises(ValueError, match="LCO, LFP, NMC"):
        cell_model().ocv_v("NaIon", 0.5)


def test_committed_tables_match_a_pybamm_regeneration() -> None:
    import pybamm  # noqa: F401

    from pulsebms.envs import cell_tables

    doc = _doc()
    for chem in ("LFP", "NMC", "LCO"):
        ocv = cell_tables.ocv_table(chem)
        assert np.allclose(ocv, doc["chemistries"][chem]["ocv_v"], atol=1e-8)
    # A subset of the resistance grid: one SoC and two temperatures, every duration.
    socs = doc["resistance_soc_grid"]
    temps = doc["temperature_grid_c"]
    for direction in ("discharge", "charge"):
        table = np.array(doc["chemistries"]["NMC"][f"resistance_{direction}_ohm"])
        sub = cell_tables.resistance_table("NMC", direction, [socs[4]], [temps[2], temps[4]])
        # Mid-SoC every pulse stays in the window, so no cross-SoC filling is involved.
        assert np.allclose(sub[:, 0, :], table[:, 4, [2, 4]], rtol=1e-6)
    assert doc["duration_grid_s"] == list(cell_tables.DURATION_GRID_S)
