"""Forecast errors that evolve like a real forecaster's: the martingale model of forecast evolution.

A noisy forecast (``Scenario.forecast="noisy"``) of target sample ``t`` issued at sample
``k`` (lead ``j = t − k ≥ 1``) is the truth plus an error built from independent standard
normal **innovations** ``η[t, i]`` (``i = 0, 1, …``), one revealed per step as the lead
shrinks::

    Z[t, j − 1] = η[t, 0] + η[t, 1] + … + η[t, j − 1]        (standardised error at lead j)
    net load:  truth + σ · site_peak_load_w · Z                (additive)
    price:     truth · (1 + σ · Z)                             (multiplicative)

with ``σ = forecast_noise_1h · √(dt_s / 3600)`` the std one control interval ahead, so
the spread is stated per hour whatever the interval.

This is the martingale model of forecast evolution (Graves et al. 1986; Heath &
Jackson 1994): the forecasts of one target form a martingale that ends at the truth. So

* the error at lead ``j`` has std ``σ·√j`` = ``forecast_noise_1h·√(lead in hours)``;
* the forecast of ``t`` issued at ``k + 1`` differs from the one issued at ``k`` by exactly
  one innovation, ``σ·η[t, j − 1]`` (times the site peak or the price): independent of
  everything seen before;
* no combination of the earlier forecasts of ``t`` beats the latest one: they are the latest
  plus independent innovations, so averaging them only adds error. (The model it replaces
  drew fresh errors for every lead at every step: the mean of ``m`` issues of one hour was
  ``≈ √m`` closer to the truth than the latest — an artefact no real forecast allows.)

The errors of an episode are drawn once, at reset (:meth:`ForecastErrors.draw`): one
``(n_samples, max_lead)`` array of innovations per signal, net load first, then price, and
a cumulative sum along the lead axis. The forecast issued at ``k`` reads, at lead ``j``,
entry ``[k + j, j − 1]``. Memory: ``2 · 8 · n_samples · max_lead`` bytes (2.7 MB for a day
of 5-min steps with a 24 h forecast; 66 MB for 60 s steps with a 24 h forecast).

Example:
    >>> import numpy as np
    >>> errors = ForecastErrors.draw(n_samples=10, max_lead=4, rng=np.random.default_rng(0))
    >>> now, later = errors.at(2, 4), errors.at(3, 4)  # issued at samples 2 and 3
    >>> # sample 6 at lead 4, then at lead 3: they differ by one innovation
    >>> bool(np.isclose(now[0][3] - later[0][2], errors.net_load[6, 3] - errors.net_load[6, 2]))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["ForecastErrors"]


@dataclass(frozen=True)
class ForecastErrors:
    """One episode's standardised forecast errors of net load and price (read-only arrays).

    Attributes:
        net_load: ``(n_samples, max_lead)``; entry ``[t, j − 1]`` is the standardised error
            of the net-load forecast of sample ``t`` issued ``j`` samples before it (the sum
            of ``j`` innovations; std ``√j``).
        price: The same for the import price, independent of ``net_load``.
    """

    net_load: FloatArray
    price: FloatArray

    def __post_init__(self) -> None:
        if self.net_load.ndim != 2 or self.net_load.shape != self.price.shape:
            raise ValueError(
                "ForecastErrors needs two 2-D arrays of one shape (n_samples, max_lead), got "
                f"{self.net_load.shape} and {self.price.shape}"
            )

    @property
    def n_samples(self) -> int:
        """Number of target samples the errors cover."""
        return int(self.net_load.shape[0])

    @property
    def max_lead(self) -> int:
        """The longest lead [control intervals] the errors cover."""
        return int(self.net_load.shape[1])

    @classmethod
    def draw(cls, *, n_samples: int, max_lead: int, rng: np.random.Generator) -> ForecastErrors:
        """Draw an episode's errors: innovations of net load, then of price, cumulated over lead.

        Args:
            n_samples: Number of target samples (the episode's series length).
            max_lead: Longest lead to cover (the forecast length, ≥ 0).
            rng: The generator to draw from (``2 · n_samples · max_lead`` standard normals).

        Returns:
            The errors.

        Raises:
            ValueError: On ``n_samples < 1`` or ``max_lead < 0`` (or non-integers).

        Example:
            >>> import numpy as np
            >>> e = ForecastErrors.draw(n_samples=5, max_lead=3, rng=np.random.default_rng(1))
            >>> e.net_load.shape, e.max_lead
            ((5, 3), 3)
        """
        for name, value, low in (("n_samples", n_samples, 1), ("max_lead", max_lead, 0)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(
                    f"ForecastErrors.draw needs an integer {name} >= {low}, got {value!r}"
                )
        shape = (int(n_samples), int(max_lead))
        net = np.cumsum(rng.standard_normal(shape), axis=1)
        price = np.cumsum(rng.standard_normal(shape), axis=1)
        net.setflags(write=False)
        price.setflags(write=False)
        return cls(net_load=net, price=price)

    def at(self, k: int, n_ahead: int) -> tuple[FloatArray, FloatArray]:
        """Standardised errors of the forecast issued at ``k`` for samples ``k+1 … k+n_ahead``.

        Lead ``j`` (``1 … n_ahead``) reads entry ``[k + j, j − 1]``; a target past the last
        sample reads the last sample's row (the series repeats its last sample there).

        Args:
            k: Index of the issuing sample (≥ 0).
            n_ahead: Forecast length (``0 … max_lead``).

        Returns:
            ``(net_load, price)``, each of shape ``(n_ahead,)``.

        Raises:
            ValueError: If ``k < 0`` or ``n_ahead`` is outside ``0 … max_lead``.
        """
        if k < 0 or not 0 <= n_ahead <= self.max_lead:
            raise ValueError(
                f"forecast errors cover k >= 0 and leads 1..{self.max_lead}, asked for k={k}, "
                f"n_ahead={n_ahead}"
            )
        leads = np.arange(n_ahead)
        rows = np.minimum(k + 1 + leads, self.n_samples - 1)
        return self.net_load[rows, leads], self.price[rows, leads]
