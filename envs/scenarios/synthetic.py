"""Seeded synthetic generators (numpy only) for load, PV, price and ambient temperature.

Every generator takes the local hour of day and day of year of each sample plus a
``numpy.random.Generator``; nothing touches the global ``np.random`` state, so a seeded
generator gives bit-identical series. Slow fluctuations are first-order autoregressive
(AR(1)) processes with correlation ``exp(-dt / tau)`` between samples ``dt`` apart.
"""

from __future__ import annotations

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["ar1", "synthetic_ambient_c", "synthetic_load_pu", "synthetic_pv_pu", "tou_price"]


def ar1(rng: np.random.Generator, n: int, dt_s: float, tau_s: float) -> FloatArray:
    """A stationary AR(1) process with unit variance and correlation time ``tau_s``.

    Args:
        rng: Seeded generator.
        n: Number of samples.
        dt_s: Sample spacing [s].
        tau_s: Correlation time [s].

    Returns:
        ``n`` samples, each marginally standard normal.
    """
    rho = float(np.exp(-dt_s / tau_s))
    eps = rng.standard_normal(n)
    out = np.empty(n)
    scale = float(np.sqrt(1.0 - rho * rho))
    x = eps[0]
    for i in range(n):
        if i:
            x = rho * x + scale * eps[i]
        out[i] = x
    return out


def synthetic_load_pu(
    hour: FloatArray, day_of_year: FloatArray, rng: np.random.Generator, noise: float, dt_s: float
) -> FloatArray:
    """Residential-style site load per unit of a typical peak (≈1.0 on a winter evening).

    A base load of 0.35 p.u., a morning bump at 08:00 and an evening peak at 19:00, 15 %
    higher in winter than summer, times ``1 + noise·AR(1)`` (30-minute correlation).
    """
    h = np.mod(hour, 24.0)
    shape = (
        0.35
        + 0.30 * np.exp(-0.5 * ((h - 8.0) / 1.5) ** 2)
        + 0.60 * np.exp(-0.5 * ((h - 19.0) / 2.0) ** 2)
    )
    season = 1.0 + 0.075 * np.cos(2.0 * np.pi * day_of_year / 365.0)
    level = rng.uniform(0.9, 1.05)
    fluct = ar1(rng, h.shape[0], dt_s, 1800.0)
    return np.clip(level * shape * season * (1.0 + noise * fluct), 0.05, None)


def synthetic_pv_pu(
    hour: FloatArray, day_of_year: FloatArray, rng: np.random.Generator, dt_s: float
) -> FloatArray:
    """PV output per unit of nameplate: a seasonal clear-sky bell times seeded cloudiness.

    Day length 12 ± 3.5 h over the year (northern mid-latitude), solar noon at 12:30,
    clear-sky peak 0.65…0.9 p.u. by season; an episode's clearness is drawn in [0.35, 1]
    and fluctuates as AR(1) (20-minute correlation). Exactly zero at night.
    """
    h = np.mod(hour, 24.0)
    season = np.sin(2.0 * np.pi * (day_of_year - 80.0) / 365.0)
    day_length_h = 12.0 + 3.5 * season
    sunrise_h = 12.5 - day_length_h / 2.0
    x = (h - sunrise_h) / day_length_h
    daylight = (x > 0.0) & (x < 1.0)
    bell = np.where(daylight, np.sin(np.pi * np.clip(x, 0.0, 1.0)) ** 1.3, 0.0)
    peak = 0.775 + 0.125 * season
    clearness = rng.uniform(0.35, 1.0)
    clouds = np.clip(clearness + 0.2 * ar1(rng, h.shape[0], dt_s, 1200.0), 0.05, 1.0)
    return np.asarray(bell * peak * clouds, dtype=np.float64)


def synthetic_ambient_c(
    hour: FloatArray,
    mean_c: float,
    amplitude_c: float,
    rng: np.random.Generator,
    dt_s: float,
) -> FloatArray:
    """Ambient temperature [°C] with a daily cycle.

    A daily cosine peaking at 15:00, a seeded episode offset (σ 1.5 K) and slow AR(1)
    weather noise (σ 0.5 K, 2-hour correlation).
    """
    h = np.mod(hour, 24.0)
    offset = 1.5 * rng.standard_normal()
    noise = 0.5 * ar1(rng, h.shape[0], dt_s, 7200.0)
    return mean_c + offset + amplitude_c * np.cos(2.0 * np.pi * (h - 15.0) / 24.0) + noise


def tou_price(hour: FloatArray, schedule: tuple[tuple[float, float], ...]) -> FloatArray:
    """Time-of-use import price [EUR/kWh] at each local hour from a sorted schedule."""
    starts = np.array([s for s, _ in schedule])
    prices = np.array([p for _, p in schedule])
    idx = np.searchsorted(starts, np.mod(hour, 24.0), side="right") - 1
    return np.asarray(prices[idx], dtype=np.float64)
