"""Where a benchmark's MPC loses to the MPC-oracle: horizon, forecast noise, hour of the day.

``python -m pulsebms.experiments.mpc_gap --benchmark cold`` rolls MPC variants on one
benchmark's day (its env and evaluation shield, evaluation seeds 100–102) and prints

* the total cost of each variant, per seed, × the MPC-oracle's;
* per hour of the day, the first variant's cost minus the oracle's (total and unserved-energy
  penalty): where in the day the gap is;

then a last line ``RESULT {json}``. A variant is ``<horizon>:<sigma>:<signals>:<errors>``:
``h2`` (the suite's ``mpc``: 24 steps of 5 min) or ``h24`` (a full day on the oracle's
900 s grid, ``mpc_day``); the forecast the MPC plans on is the scenario's true future plus
errors of std ``sigma·√(lead in hours)`` (``sigma``: the relative std one hour ahead, as
``Scenario.forecast_noise_1h``) × the site peak for net load, × the price for price, on
``net``, ``price`` or ``netprice``. ``evolving`` errors are the env's own noisy-forecast
model (:class:`pulsebms.envs.scenarios.ForecastErrors`: the martingale model of forecast
evolution, drawn once per episode; consecutive issues of one target differ by one
innovation); ``fresh`` ones are drawn anew at every step (the env's model before it: the
mean of repeated issues of one target beats the latest one, an artefact kept here only to
measure it). ``h24:0:netprice:fresh`` is the oracle itself (a check). See
docs/benchmarks.md, *The cold gap is the forecast MPC's 2-h horizon*.

Example:
    >>> import numpy as np
    >>> errors = VariantErrors(0.1, "netprice", "evolving", seed=0)
    >>> a = errors.draw(k=10, n=4, n_samples=50)
    >>> a[:, 0].tolist()  # now is known
    [0.0, 0.0]
    >>> bool(np.array_equal(a, errors.draw(k=10, n=4, n_samples=50)))  # drawn once
    True
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pulsebms.core.types import FloatArray
from pulsebms.envs.scenarios import ForecastErrors

if TYPE_CHECKING:  # annotations only
    import gymnasium as gym

    from pulsebms.agents.observation import FleetObservation

__all__ = ["NoisyTrueForecast", "Variant", "VariantErrors", "main", "run_variant"]

_COSTS = ("energy_cost_eur", "degradation_cost_eur", "unserved_penalty_eur", "total_cost_eur")
ERROR_MODES = ("fresh", "evolving")
_BASELINE_OF_HORIZON = {"h2": "mpc", "h24": "mpc_day"}
SIGNALS = ("net", "price", "netprice")


@dataclass(frozen=True)
class Variant:
    """One MPC variant: horizon, noise level, the noisy signals, the error model.

    Example:
        >>> Variant.parse("h24:0.05:price:evolving")
        Variant(horizon='h24', sigma=0.05, signals='price', errors='evolving')
    """

    horizon: str
    sigma: float
    signals: str
    errors: str

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``<h2|h24>:<sigma>:<net|price|netprice>:<fresh|evolving>``."""
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueError(f"variant {text!r}: want <h2|h24>:<sigma>:<signals>:<errors>")
        horizon, sigma, signals, errors = parts
        if horizon not in ("h2", "h24"):
            raise ValueError(f"variant {text!r}: horizon must be h2 or h24")
        if errors == "consistent":
            raise ValueError(
                f"variant {text!r}: 'consistent' errors (one normal per target × √lead) are "
                "gone: two consecutive issues of a target revealed its error exactly. Use "
                "'evolving', the env's own model (the martingale model of forecast evolution)"
            )
        if signals not in SIGNALS or errors not in ERROR_MODES:
            raise ValueError(f"variant {text!r}: signals in {SIGNALS}, errors in {ERROR_MODES}")
        value = float(sigma)
        if not (np.isfinite(value) and value >= 0.0):
            raise ValueError(f"variant {text!r}: sigma must be finite and >= 0")
        return cls(horizon, value, signals, errors)

    def __str__(self) -> str:
        return f"{self.horizon}:{self.sigma:g}:{self.signals}:{self.errors}"


class VariantErrors:
    """Standardised forecast errors (2 signals × leads) of a variant: evolving or fresh.

    Args:
        sigma: Relative error std one control interval ahead (grows with √lead; lead 0 is
            exact); :func:`run_variant` converts a variant's per-hour sigma to it.
        signals: Which signals get errors: ``net``, ``price`` or ``netprice``.
        errors: ``evolving`` (the env's model, :class:`pulsebms.envs.scenarios.ForecastErrors`,
            drawn once per episode at the first call) or ``fresh`` (new independent draws
            at every call).
        seed: Seed of the errors' generator.
    """

    def __init__(self, sigma: float, signals: str, errors: str, *, seed: int) -> None:
        if errors not in ERROR_MODES or signals not in SIGNALS:
            raise ValueError(f"errors in {ERROR_MODES}, signals in {SIGNALS}")
        self.sigma, self.signals, self.errors = float(sigma), signals, errors
        self._rng = np.random.default_rng(seed)
        self.env_errors: ForecastErrors | None = None
        self._started = False

    def draw(self, k: int, n: int, n_samples: int) -> FloatArray:
        """Errors ``(2, n)`` (net load, price) of samples ``k … k+n−1`` issued at ``k``."""
        if not self._started:
            self._started = True
            if self.errors == "evolving":  # one row per target the episode can ask for
                self.env_errors = ForecastErrors.draw(
                    n_samples=n_samples + n, max_lead=max(n - 1, 0), rng=self._rng
                )
            else:  # the draw fresh variants began with before, so their figures reproduce
                self._rng.standard_normal((2, n_samples + n + 2))
        if self.env_errors is None:  # fresh: σ·√lead·(a new standard normal)
            z = self._rng.standard_normal((2, n))
            scaled = self.sigma * np.sqrt(np.arange(n, dtype=np.float64)) * z
        else:
            if k + n > self.env_errors.n_samples or n - 1 > self.env_errors.max_lead:
                raise ValueError(f"samples {k}…{k + n - 1} are past the errors drawn")
            scaled = np.zeros((2, n))
            scaled[0, 1:], scaled[1, 1:] = self.env_errors.at(k, n - 1)
            scaled *= self.sigma
        scaled[0] *= "net" in self.signals
        scaled[1] *= "price" in self.signals
        return np.asarray(scaled, dtype=np.float64)


class NoisyTrueForecast:
    """A :class:`pulsebms.agents.mpc.ForecastProvider`: the episode's true future + errors.

    Args:
        env: The FleetEnv (wrapped or not) whose present episode's series is read.
        errors: The error model.
    """

    def __init__(self, env: gym.Env[Any, Any], errors: VariantErrors) -> None:
        self._base: Any = env.unwrapped
        self.errors = errors

    def __call__(
        self, fleet: FleetObservation, horizon_steps: int
    ) -> tuple[FloatArray, FloatArray]:
        """Net load [W] and price of the next ``horizon_steps`` samples, from now."""
        series = self._base.series
        k = min(int(self._base.step_index), series.n_samples - 1)
        idx = np.minimum(np.arange(k, k + horizon_steps), series.n_samples - 1)
        err = self.errors.draw(k, horizon_steps, series.n_samples)
        net = np.asarray(series.net_load_w[idx], dtype=np.float64)
        price = np.asarray(series.price_eur_per_kwh[idx], dtype=np.float64)
        return net + err[0] * float(series.site_peak_load_w), price * (1.0 + err[1])


def run_variant(
    benchmark: str, variant: Variant | str, seed: int, *, max_steps: int | None = None
) -> FloatArray:
    """One episode of an MPC variant: cost per hour of the day ``(24, 4)``.

    Columns: energy, degradation, unserved-energy penalty, total [EUR] (the env's
    ``info``), summed per local hour of the day. ``variant="oracle"`` is the MPC-oracle.
    """
    from pulsebms.agents.env_factory import make_env
    from pulsebms.agents.evaluation import behind_shield
    from pulsebms.agents.workflow import baseline_factories
    from pulsebms.experiments.common import env_kwargs, shield_kwargs
    from pulsebms.experiments.suite import benchmark_config

    cfg = benchmark_config(benchmark)
    env = make_env(
        str(cfg.env.id),
        shield=bool(cfg.shield.enabled),
        shield_kwargs=shield_kwargs(cfg),
        **env_kwargs(cfg),
    )
    try:
        # the suite's own baselines: h2 is `mpc`, h24 `mpc_day`, "oracle" `mpc_oracle`
        if variant == "oracle":
            mpc = baseline_factories(("mpc_oracle",))["mpc_oracle"](env)
        else:
            v = Variant.parse(variant) if isinstance(variant, str) else variant
            name = _BASELINE_OF_HORIZON[v.horizon]
            mpc = baseline_factories((name,))[name](env)
            # sigma is per hour; the errors' leads count the env's control intervals
            per_interval = v.sigma * np.sqrt(float(env.unwrapped.dt_s) / 3600.0)  # type: ignore[attr-defined]
            mpc.forecast = NoisyTrueForecast(  # type: ignore[attr-defined]
                env, VariantErrors(per_interval, v.signals, v.errors, seed=seed + 7)
            )
        policy = behind_shield(mpc)
        obs, _ = env.reset(seed=seed)
        dt_s = float(env.unwrapped.dt_s)  # type: ignore[attr-defined]
        start_h = float(env.unwrapped.series.start_hour)  # type: ignore[attr-defined]
        hourly = np.zeros((24, len(_COSTS)))
        k = 0
        while True:
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            hour = int((start_h + k * dt_s / 3600.0) % 24.0)
            hourly[hour] += [float(info.get(name, 0.0)) for name in _COSTS]
            k += 1
            if terminated or truncated or (max_steps is not None and k >= max_steps):
                break
    finally:
        env.close()  # type: ignore[no-untyped-call]
    return hourly


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulsebms.experiments.mpc_gap``: print the gap table and ``RESULT``."""
    parser = argparse.ArgumentParser(prog="python -m pulsebms.experiments.mpc_gap")
    parser.add_argument("--benchmark", default="cold")
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["h2:0:net:fresh", "h24:0:net:fresh", "h24:0.05:netprice:fresh"],
        help="<h2|h24>:<sigma>:<net|price|netprice>:<fresh|evolving>",
    )
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    variants = [Variant.parse(v) for v in args.variants]
    oracle = {
        s: run_variant(args.benchmark, "oracle", s, max_steps=args.max_steps) for s in args.seeds
    }
    result: dict[str, Any] = {"benchmark": args.benchmark, "seeds": args.seeds, "x_oracle": {}}
    print(f"{args.benchmark}: total cost × MPC-oracle per seed {args.seeds}")
    first: dict[int, FloatArray] = {}
    for v in variants:
        ratios = []
        for s in args.seeds:
            hourly = run_variant(args.benchmark, v, s, max_steps=args.max_steps)
            if v == variants[0]:
                first[s] = hourly
            ratios.append(float(hourly[:, -1].sum() / oracle[s][:, -1].sum()))
        result["x_oracle"][str(v)] = ratios
        print(
            f"  {v!s:28s} "
            + " / ".join(f"{r:.3f}" for r in ratios)
            + f"  mean {np.mean(ratios):.3f}"
        )
    print(f"per hour, {variants[0]} minus the oracle [EUR]: total (unserved-energy penalty)")
    gap = {s: first[s] - oracle[s] for s in args.seeds}
    for hour in range(24):
        cells = [f"{gap[s][hour, -1]:+.2f} ({gap[s][hour, 2]:+.2f})" for s in args.seeds]
        if any(abs(gap[s][hour, -1]) >= 0.01 for s in args.seeds):
            print(f"  {hour:02d} h  " + "  ".join(cells))
    result["hourly_gap_total_eur"] = {str(s): gap[s][:, -1].round(4).tolist() for s in args.seeds}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
