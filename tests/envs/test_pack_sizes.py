"""Pack sizes: packs stated by energy, current limits that scale with the pack, fleet configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from pulsebms.envs import FleetEnv, PackSpec, mixed_fleet
from pulsebms.envs.fleet_env import make_pack_specs
from pulsebms.envs.pack import SERIES_BY_CHEMISTRY, cell_energy_wh
from pulsebms.safety import ShieldWrapper

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("chemistry", ["LFP", "NMC", "LCO"])
@pytest.mark.parametrize("energy_kwh", [1.0, 60.0, 100.0])
def test_energy_resolves_to_cells_within_half_a_string(chemistry: str, energy_kwh: float) -> None:
    pack = PackSpec(chemistry, energy_kwh=energy_kwh)
    assert pack.series == SERIES_BY_CHEMISTRY[chemistry]
    string_kwh = pack.series * cell_energy_wh(chemistry) / 1000.0
    assert abs(pack.nominal_energy_kwh - energy_kwh) <= 0.5 * string_kwh + 1e-9
    assert dataclasses.replace(pack, name="x").parallel == pack.parallel  # idempotent
    high_voltage = PackSpec.from_energy(chemistry, energy_kwh * 10, series=112)
    assert high_voltage.series == 112
    string_hv_kwh = 112 * cell_energy_wh(chemistry) / 1000.0
    assert abs(high_voltage.nominal_energy_kwh - energy_kwh * 10) <= 0.5 * string_hv_kwh + 1e-9


def test_cell_counts_keep_their_defaults_and_errors() -> None:
    assert (PackSpec("NMC").series, PackSpec("NMC").parallel) == (14, 4)
    assert PackSpec("LFP", series=16, parallel=8).parallel == 8
    with pytest.raises(ValueError, match="contradicts energy_kwh"):
        PackSpec("LFP", parallel=8, energy_kwh=80.0)
    with pytest.raises(ValueError, match="below half a string"):
        PackSpec("NMC", energy_kwh=0.01)
    with pytest.raises(ValueError, match="energy_kwh must be finite and > 0"):
        PackSpec("NMC", energy_kwh=-5.0)
    with pytest.raises(ValueError, match="series must be an integer >= 1"):
        PackSpec("NMC", series=-1)
    with pytest.raises(ValueError, match=r"fleet\[0\].*unknown chemistry"):
        make_pack_specs([{"chemistry": "NaS", "energy_kwh": 10.0}])


def test_env_prices_a_pack_stated_by_energy_at_that_energy() -> None:
    env = FleetEnv(
        fleet=[{"chemistry": c, "energy_kwh": 80.0} for c in ("LFP", "NMC", "LCO")],
        fidelity="ecm",
        horizon_steps=2,
    )
    np.testing.assert_allclose(env.pack_energy_kwh, [p.nominal_energy_kwh for p in env.packs])
    np.testing.assert_allclose(env.pack_energy_kwh, 80.0, rtol=0.01)


def test_default_current_limit_scales_with_the_pack_capacity() -> None:
    env = FleetEnv(fleet=[{"chemistry": "LFP", "energy_kwh": 100.0}], fidelity="ecm")
    capacity_ah = float(env.ratings.capacity_ah[0])
    lim = env.pack_limits[0]
    assert (lim.current_min_a, lim.current_max_a) == (-2.0 * capacity_ah, 2.0 * capacity_ah)
    assert lim.current_max_a > 10 * 100.0  # not the fixed ±100 A (0.05 C of this pack)
    fixed = FleetEnv(fleet=[{"chemistry": "LFP"}], fidelity="ecm", current_limit_c_rate=None)
    assert (fixed.pack_limits[0].current_min_a, fixed.pack_limits[0].current_max_a) == (-100, 100)
    # Explicit limits win, common or per chemistry; a larger c_rate_max lifts the scaled cap.
    given = FleetEnv(
        fleet=[{"chemistry": "LFP", "energy_kwh": 100.0}, {"chemistry": "NMC"}],
        fidelity="ecm",
        limits={"c_rate_max": 3.0, "NMC": {"current_min_a": -10.0}},
    )
    lfp, nmc = given.pack_limits
    assert lfp.current_max_a == pytest.approx(3.0 * capacity_ah)
    assert nmc.current_min_a == -10.0
    assert nmc.current_max_a == pytest.approx(3.0 * float(given.ratings.capacity_ah[1]))
    with pytest.raises(ValueError, match="current_limit_c_rate"):
        FleetEnv(fleet=[{"chemistry": "LFP"}], fidelity="ecm", current_limit_c_rate=0.0)


def _rollout(env: ShieldWrapper, n: int = 40) -> list[object]:
    rng = np.random.default_rng(11)
    out: list[object] = [env.reset(seed=4)[0].tobytes()]
    for _ in range(n):
        obs, reward, _, _, info = env.step(rng.uniform(-1.2, 1.2, 3).astype(np.float32))
        shielded = np.asarray(info["pack_power_w"]).tobytes()
        out.append((obs.tobytes(), reward, shielded, info["n_violations"], info["cost"]))
    return out


def test_scaled_current_limit_leaves_the_default_fleet_bit_identical() -> None:
    # At 2 C of nominal capacity the current cap stays above the 1 C c_rate_max bound, so
    # for the ≈ 1 kWh default fleet shield and violations are exactly as under ±100 A.
    runs = [
        _rollout(ShieldWrapper(FleetEnv(fidelity="ecm", current_limit_c_rate=rate)))
        for rate in (2.0, None)
    ]
    assert runs[0] == runs[1]


def test_fleet_configs_resolve() -> None:
    mixed20 = yaml.safe_load((CONFIGS / "fleet" / "mixed20.yaml").read_text())
    assert mixed20["packs"] == mixed_fleet(20, energy_kwh=(60.0, 100.0))
    specs = make_pack_specs(mixed20["packs"])
    energies = [p.nominal_energy_kwh for p in specs]
    assert min(energies) > 59.0
    assert max(energies) < 101.0
    site = yaml.safe_load((CONFIGS / "fleet" / "energy_80kwh.yaml").read_text())
    assert [p.nominal_energy_kwh for p in make_pack_specs(site["packs"])] == pytest.approx(
        [80.0] * 3, rel=0.01
    )
    assert mixed_fleet(4)[3] == {  # the registered ids' fleet is unchanged
        "chemistry": "LFP", "series": 16, "parallel": 8, "initial_soc": 0.65,
        "initial_soh": 0.97, "name": "lfp-3",
    }  # fmt: skip


def test_randomized_scenario_randomises_the_fleet_state_unless_told_not_to() -> None:
    env = FleetEnv(scenario="randomized", fidelity="ecm", horizon_steps=2)
    assert env.randomize_initial_state
    socs = {tuple(env.reset(seed=s)[0][:3].round(4)) for s in range(3)}
    assert len(socs) == 3
    again = FleetEnv(scenario="randomized", fidelity="ecm", horizon_steps=2)
    np.testing.assert_array_equal(env.reset(seed=1)[0], again.reset(seed=1)[0])
    off = FleetEnv(scenario="randomized", fidelity="ecm", randomize_initial_state=False)
    np.testing.assert_allclose(off.reset(seed=0)[1]["demand_w"], off.reset(seed=0)[1]["demand_w"])
    assert not off.randomize_initial_state
    assert not FleetEnv(fidelity="ecm").randomize_initial_state
