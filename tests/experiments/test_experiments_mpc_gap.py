"""The MPC-gap diagnosis: its forecast-error models and its noisy true-future forecast."""

from __future__ import annotations

import numpy as np
import pytest

from pulsebms.envs.scenarios import ForecastErrors
from pulsebms.experiments.mpc_gap import NoisyTrueForecast, Variant, VariantErrors


def test_evolving_errors_are_the_envs_model_and_fresh_ones_are_not() -> None:
    evolving = VariantErrors(0.1, "netprice", "evolving", seed=1)
    fresh = VariantErrors(0.1, "netprice", "fresh", seed=1)
    a, b = evolving.draw(5, 40, 100), evolving.draw(6, 40, 100)
    assert np.all(a[:, 0] == 0.0)  # now is known
    # The env's own model, drawn from the variant's generator.
    env = ForecastErrors.draw(n_samples=140, max_lead=39, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a[0, 1:], 0.1 * np.asarray(env.at(5, 39)[0]))
    np.testing.assert_array_equal(a[1, 1:], 0.1 * np.asarray(env.at(5, 39)[1]))
    # The same target one issue later: the earlier error minus one innovation, never the
    # fresh model's unrelated draw.
    innovations = (a[:, 2:] - b[:, 1:-1]) / 0.1
    assert float(np.abs(innovations).max()) < 5.0  # one standard normal each
    assert float(np.corrcoef(a[0, 2:], b[0, 1:-1])[0, 1]) > 0.8  # mostly the same error
    f_a, f_b = fresh.draw(5, 40, 100), fresh.draw(6, 40, 100)
    assert abs(float(np.corrcoef(f_a[0, 2:], f_b[0, 1:-1])[0, 1])) < 0.5
    # Std grows with √lead: at lead 39 about 0.1·√39 ≈ 0.62 over many draws.
    for mode in ("fresh", "evolving"):
        many = np.stack(
            [VariantErrors(0.1, "net", mode, seed=s).draw(0, 40, 40) for s in range(400)]
        )
        assert 0.55 < float(np.std(many[:, 0, 39])) < 0.70
        assert np.all(many[:, 1] == 0.0)  # "net": no price error


def test_variant_parsing_names_what_is_wrong() -> None:
    assert Variant.parse("h2:0.02:net:fresh") == Variant("h2", 0.02, "net", "fresh")
    assert str(Variant.parse("h24:0.050:netprice:evolving")) == "h24:0.05:netprice:evolving"
    for bad, match in (
        ("h3:0:net:fresh", "horizon"),
        ("h2:-1:net:fresh", "sigma"),
        ("h2:0:load:fresh", "signals"),
        ("h2:0:net", "want"),
        ("h2:0.05:net:consistent", "evolving"),  # the old model, gone: named with its successor
    ):
        with pytest.raises(ValueError, match=match):
            Variant.parse(bad)


def test_noisy_true_forecast_without_noise_is_the_oracles_future() -> None:
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.mpc import OracleForecast

    env = make_env("PulseBMS/FleetSmall-v0", shield=False, dt_s=900.0, horizon_steps=8)
    env.reset(seed=0)
    fleet = None  # neither provider reads the observation
    exact = NoisyTrueForecast(env, VariantErrors(0.0, "netprice", "fresh", seed=0))
    noisy = NoisyTrueForecast(env, VariantErrors(0.2, "netprice", "evolving", seed=0))
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
