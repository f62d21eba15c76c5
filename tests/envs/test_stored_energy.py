"""Stored-energy value (opt-in): the episode's terms sum to c_T × (E_start − E_end)."""

from __future__ import annotations

import numpy as np
import pytest

from pulsebms.envs import FleetEnv
from pulsebms.envs.costs import stored_energy_price


def _env(value: object) -> FleetEnv:
    return FleetEnv(
        fidelity="ecm", scenario="tou", dt_s=900.0, horizon_steps=24, stored_energy_value=value
    )


def _episode(env: FleetEnv, seed: int = 3) -> tuple[dict, list[dict]]:
    _, first = env.reset(seed=seed)
    infos = []
    for k in range(env.horizon_steps):
        action = np.full(env.n_packs, -0.4 if k < 8 else 0.3, dtype=np.float32)
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == pytest.approx(-info["total_cost_eur"], rel=1e-12)
        infos.append(info)
        if terminated or truncated:
            break
    return first, infos


@pytest.mark.parametrize("value", ["min_price", "mean_price", 0.2])
def test_stored_energy_terms_sum_to_the_energy_used_at_the_price(value: object) -> None:
    env = _env(value)
    first, infos = _episode(env)
    price = first["stored_energy_price_eur_per_kwh"]
    expected = stored_energy_price(value, env.series.price_eur_per_kwh[: env.horizon_steps])  # type: ignore[arg-type]
    assert price == pytest.approx(expected)
    used_kwh = first["stored_energy_kwh"] - infos[-1]["stored_energy_kwh"]
    assert abs(used_kwh) > 0.05  # the day moves energy: not vacuous
    total = sum(i["stored_energy_cost_eur"] for i in infos)
    assert total == pytest.approx(price * used_kwh, rel=1e-9, abs=1e-12)
    for info in infos:  # in the reward, term by term
        parts = ("energy", "degradation", "unserved_penalty", "fault_penalty", "stored_energy")
        assert info["total_cost_eur"] == pytest.approx(
            sum(
                info[
                    f"{p}_cost_eur"
                    if p in ("energy", "degradation", "stored_energy")
                    else f"{p}_eur"
                ]
                for p in parts
            )
        )
    env.close()


def test_off_by_default_and_bad_values_refused() -> None:
    env = _env(None)
    first, infos = _episode(env)
    assert first["stored_energy_price_eur_per_kwh"] is None
    assert all(i["stored_energy_cost_eur"] == 0.0 for i in infos)
    env.close()
    for bad in ("max_price", -0.1, float("nan")):
        with pytest.raises(ValueError, match="stored_energy_value"):
            _env(bad)


def test_min_price_makes_the_oracle_the_reference_of_the_episode() -> None:
    """With stored energy valued, the full-day oracle is no worse than the 24-step MPC.

    It was ~3 % worse when it planned past the episode's end and kept energy unsold).
    """
    from pulsebms.agents.evaluation import evaluate_policies
    from pulsebms.agents.workflow import baseline_factories

    table = evaluate_policies(
        baseline_factories(["mpc", "mpc_oracle"]),
        env_id="PulseBMS/FleetSmall-v0",
        seeds=[0],
        env_kwargs={
            "scenario": "tou",
            "dt_s": 1800.0,
            "horizon_steps": 48,
            "stored_energy_value": "min_price",
        },
        progress=False,
        no_battery=False,
    )
    assert table.mean("mpc_oracle", "total_cost") <= table.mean("mpc", "total_cost") + 1e-6
