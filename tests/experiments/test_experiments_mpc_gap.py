"""The MPC-gap diagnosis: its forecast-error models and its noisy true-future forecast."""

from __future__ import annotations

import numpy as np
import pytest

from pulsebms.experiments.mpc_gap import ForecastErrors, NoisyTrueForecast, Variant


def test_consistent_errors_keep_their_sign_and_fresh_ones_do_not() -> None:
    consistent = ForecastErrors(0.1, "netprice", "consistent", seed=1)
    fresh = ForecastErrors(0.1, "netprice", "fresh", seed=1)
    a, b = consistent.draw(5, 40, 100), consistent.draw(6, 40, 100)
    assert np.all(a[:, 0] == 0.0)  # now is known
    # The same target sample seen one step later: same standard normal, smaller lead.
    z_a = a[:, 2:] / np.sqrt(np.arange(2, 40))
    z_b = b[:, 1:-1] / np.sqrt(np.arange(1, 39))
    np.testing.assert_allclose(z_a, z_b)
    f_a, f_b = fresh.draw(5, 40, 100), fresh.draw(6, 40, 100)
    assert not np.allclose(
        f_a[:, 2:] / np.sqrt(np.arange(2, 40)), f_b[:, 1:-1] / np.sqrt(np.arange(1, 39))
    )
    # Std grows with √lead: at lead 39 about 0.1·√39 ≈ 0.62 over many draws.
    many = np.stack(
        [ForecastErrors(0.1, "net", "fresh", seed=s).draw(0, 40, 40) for s in range(400)]
    )
    assert 0.55 < float(np.std(many[:, 0, 39])) < 0.70
    assert np.all(many[:, 1] == 0.0)  # "net": no price error


def test_variant_parsing_names_what_is_wrong() -> None:
    assert Variant.parse("h2:0.02:net:fresh") == Variant("h2", 0.02, "net", "fresh")
    assert str(Variant.parse("h24:0.050:netprice:consistent")) == "h24:0.05:netprice:consistent"
    for bad, match in (
        ("h3:0:net:fresh", "horizon"),
        ("h2:-1:net:fresh", "sigma"),
        ("h2:0:load:fresh", "signals"),
        ("h2:0:net", "want"),
    ):
        with pytest.raises(ValueError, match=match):
            Variant.parse(bad)


def test_noisy_true_forecast_without_noise_is_the_oracles_future() -> None:
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.mpc import OracleForecast

    env = make_env("PulseBMS/FleetSmall-v0", shield=False, dt_s=900.0, horizon_steps=8)
    env.reset(seed=0)
    fleet = None  # neither provider reads the observation
    exact = NoisyTrueForecast(env, ForecastErrors(0.0, "netprice", "fresh", seed=0))
    noisy = NoisyTrueForecast(env, ForecastErrors(0.2, "netprice", "fresh", seed=0))
    for _ in range(3):
        net, price = exact(fleet, 12)  # type: ignore[arg-type]
        true_net, true_price = OracleForecast(env)(fleet, 12)  # type: ignore[arg-type]
        np.testing.assert_allclose(net, true_net)
        np.testing.assert_allclose(price, true_price)
        noisy_net, _ = noisy(fleet, 12)  # type: ignore[arg-type]
        assert noisy_net[0] == true_net[0]
        assert not np.allclose(noisy_net[1:], true_net[1:])
        env.step(np.zeros(3, dtype=np.float32))
    env.close()
