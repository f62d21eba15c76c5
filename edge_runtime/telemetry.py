"""Latest telemetry per pack and of the site, with timestamps and a watchdog.

Every pack keeps the last value and arrival time of seven quantities: SoC, SoH, current,
and **both ends** of the cell-voltage and temperature windows
(:data:`STORED_FIELDS`). Telemetry keys map onto them as the codec's quantity contract
says:

- ``cell_voltage_v`` (one value) sets both ``cell_voltage_min_v`` and ``cell_voltage_max_v``;
  ``temperature_c`` sets both ``temperature_min_c`` and ``temperature_max_c``;
- ``cell_voltage_min_v`` / ``cell_voltage_max_v`` / ``temperature_min_c`` /
  ``temperature_max_c`` set their own end;
- per-cell voltages (``cell_voltages_v``: cell index → V, valid cells only) go into a
  per-pack cell table; cells flagged invalid are dropped from it; the pack's min/max cell
  voltage is then the min/max over the table (every valid cell ever reported, the latest
  value of each).

A pack is *fresh* when each stored quantity arrived within ``stale_after_s``; otherwise
the watchdog declares it stale and the runtime puts it in the safe state. A pack that
never reported is stale. The site (demand, price, time of day) has its own timeout.

The shield and the observation see one value per quantity: the midpoint of the window
(``(min + max) / 2``), which is the single value itself when the BMS sends one, so the
observation is bit-identical to the single-signal case.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import BoolArray, FloatArray, IntArray
from pulsebms.safety.state import FleetState

__all__ = ["STORED_FIELDS", "TELEMETRY_KEYS", "SiteSnapshot", "TelemetryStore"]

STORED_FIELDS = (
    "soc",
    "soh",
    "current_a",
    "cell_voltage_min_v",
    "cell_voltage_max_v",
    "temperature_min_c",
    "temperature_max_c",
)
"""What the store keeps per pack (every one required for a pack to be fresh)."""

_SOC, _SOH, _CUR, _VMIN, _VMAX, _TMIN, _TMAX = range(len(STORED_FIELDS))

_ROWS: dict[str, tuple[int, ...]] = {
    "soc": (_SOC,),
    "soh": (_SOH,),
    "current_a": (_CUR,),
    "cell_voltage_v": (_VMIN, _VMAX),
    "cell_voltage_min_v": (_VMIN,),
    "cell_voltage_max_v": (_VMAX,),
    "temperature_c": (_TMIN, _TMAX),
    "temperature_min_c": (_TMIN,),
    "temperature_max_c": (_TMAX,),
}


def _flat_view(table: FloatArray) -> memoryview[float]:
    """A 1-D float view of a C-contiguous float64 table (its memory, not a copy)."""
    flat: Any = table.reshape(-1)
    view: memoryview[float] = memoryview(flat)
    return view


TELEMETRY_KEYS = tuple(_ROWS)
"""Telemetry value keys the store understands (others are ignored)."""


@dataclass(frozen=True)
class SiteSnapshot:
    """The site's latest values.

    Attributes:
        demand_w: Power demand on the fleet [W], + = discharge (0 if never received).
        price_per_kwh: Energy price (0 if never received).
        time_of_day_s: Seconds since midnight (NaN if never received).
        ambient_c: Ambient temperature [°C] (NaN if never received).
        fresh: Whether the site values arrived within the site timeout.
        age_s: Seconds since the last site values (inf if never).
    """

    demand_w: float
    price_per_kwh: float
    time_of_day_s: float
    ambient_c: float
    fresh: bool
    age_s: float


class TelemetryStore:
    """Latest value and arrival time of every telemetry quantity.

    Args:
        n_packs: Number of packs.
        stale_after_s: A pack whose stored quantities are older than this is stale.
        site_stale_after_s: Site timeout; ``stale_after_s`` when ``None``.

    Raises:
        ValueError: If a timeout is not > 0.

    Example:
        >>> store = TelemetryStore(2, stale_after_s=1.0)
        >>> store.update_pack(0, {"soc": 0.5}, now_s=10.0)
        >>> store.stale(now_s=10.5).tolist()  # pack 0 lacks SoH, ...; pack 1 never reported
        [True, True]
        >>> store.update_pack(1, {"cell_voltage_min_v": 3.1, "cell_voltage_max_v": 3.3}, now_s=11)
        >>> store.window(1)["cell_voltage_v"]
        (3.1, 3.3)
    """

    def __init__(
        self, n_packs: int, *, stale_after_s: float, site_stale_after_s: float | None = None
    ) -> None:
        site_timeout = stale_after_s if site_stale_after_s is None else site_stale_after_s
        if not (stale_after_s > 0 and site_timeout > 0):
            raise ValueError(
                f"telemetry timeouts must be > 0, got {stale_after_s}, {site_stale_after_s}"
            )
        self.n_packs = n_packs
        self.stale_after_s = float(stale_after_s)
        self.site_stale_after_s = float(site_timeout)
        self._values = np.full((len(STORED_FIELDS), n_packs), np.nan)
        self._updated = np.full((len(STORED_FIELDS), n_packs), -math.inf)
        self.values: dict[str, FloatArray] = {
            f: self._values[i] for i, f in enumerate(STORED_FIELDS)
        }
        """Quantity → per-pack latest value (views of one array)."""
        self.updated_s: dict[str, FloatArray] = {
            f: self._updated[i] for i, f in enumerate(STORED_FIELDS)
        }
        """Quantity → per-pack arrival time [s] (-inf if never)."""
        # flat float views of the two tables: a scalar write or read through them costs a
        # fraction of numpy's per-element indexing (same doubles, same memory)
        self._values_flat = _flat_view(self._values)
        self._updated_flat = _flat_view(self._updated)
        self._offsets = {k: tuple(r * n_packs for r in rows) for k, rows in _ROWS.items()}
        self._cells: list[FloatArray | None] = [None] * n_packs
        self._complete = [False] * n_packs  # has_all latched (arrival times only grow)
        self._all_complete = False  # every entry of _complete (reset with any of them)
        self._batch_rows: dict[tuple[str, ...], tuple[IntArray, list[int]]] = {}
        self.status = np.zeros(n_packs, dtype=np.int64)
        self._site: dict[str, float] = {}
        self._site_updated_s = -math.inf

    def update_pack(
        self,
        pack: int,
        values: Mapping[str, float],
        *,
        now_s: float,
        status: int | None = None,
        cell_voltages_v: Mapping[int, float] | None = None,
        invalid_cells: Iterable[int] = (),
    ) -> None:
        """Record quantities of one pack received at ``now_s``.

        Args:
            pack: Pack index.
            values: Quantity → value (keys of :data:`TELEMETRY_KEYS`; others ignored).
            now_s: Arrival time [s] (the runtime's clock).
            status: BMS status code, if the frame carries one.
            cell_voltages_v: Cell index → voltage [V] of valid cells, if the frame has them.
            invalid_cells: Cells the BMS flags invalid (dropped from the cell table).
        """
        if not math.isfinite(now_s):  # a non-finite arrival time unsets has_all, as before
            self._complete[pack] = False
            self._all_complete = False
        if 0 <= pack < self.n_packs:
            vals, upd, offsets = self._values_flat, self._updated_flat, self._offsets
            for key, value in values.items():
                flat = offsets.get(key)
                if flat is not None:
                    for i in flat:
                        vals[i + pack] = value
                        upd[i + pack] = now_s
        else:  # numpy's indexing (negative packs count from the end, others raise)
            for key, value in values.items():
                for r in _ROWS.get(key, ()):
                    self._values[r, pack] = value
                    self._updated[r, pack] = now_s
        if cell_voltages_v or invalid_cells:
            self._update_cells(pack, cell_voltages_v or {}, invalid_cells, now_s)
        if status is not None:
            self.status[pack] = status

    def update_packs(
        self,
        packs: IntArray,
        values: Mapping[str, FloatArray],
        *,
        now_s: float,
        status: IntArray | None = None,
    ) -> None:
        """Record one frame's quantities for each of several packs, received at ``now_s``.

        The same as :meth:`update_pack` for each ``packs[j]`` with ``{key: values[key][j]}``
        and ``status[j]``, in one array write per stored row.

        Args:
            packs: Distinct pack indices, ``0 <= pack < n_packs``.
            values: Quantity → per-pack values (keys of :data:`TELEMETRY_KEYS`; others are
                ignored).
            now_s: Arrival time [s] (the runtime's clock).
            status: BMS status code per pack, if the frames carry one.

        Raises:
            IndexError: If a pack is out of range.
        """
        if len(packs) and (int(packs.min()) < 0 or int(packs.max()) >= self.n_packs):
            raise IndexError(f"packs {packs.tolist()} outside 0..{self.n_packs - 1}")
        if not math.isfinite(now_s):
            for pack in packs.tolist():
                self._complete[pack] = False
            self._all_complete = False
        plan = self._batch_rows.get(tuple(values))
        if plan is None:  # stored row per column of the values (a key may fill two rows)
            pairs = [(r, j) for j, key in enumerate(values) for r in _ROWS.get(key, ())]
            rows = np.asarray([r for r, _ in pairs], dtype=np.intp).reshape(-1, 1)
            plan = self._batch_rows[tuple(values)] = (rows, [j for _, j in pairs])
        rows, columns = plan
        if len(columns):
            given = list(values.values())
            self._values[rows, packs] = np.stack([given[j] for j in columns])
            self._updated[rows, packs] = now_s
        if status is not None:
            self.status[packs] = status

    def has_all_packs(self, packs: IntArray) -> BoolArray:
        """:meth:`has_all` of each of ``packs``."""
        if self._all_complete:
            return np.ones(len(packs), dtype=bool)
        out = np.fromiter((self.has_all(p) for p in packs.tolist()), dtype=bool, count=len(packs))
        self._all_complete = all(self._complete)
        return out

    def pack_table(self, packs: IntArray) -> FloatArray:
        """Stored values of ``packs``, rows in :data:`STORED_FIELDS` order (a copy)."""
        return self._values[:, packs]

    def _update_cells(
        self, pack: int, cells: Mapping[int, float], invalid: Iterable[int], now_s: float
    ) -> None:
        invalid = tuple(invalid)
        top = max((*cells.keys(), *invalid), default=-1) + 1
        table = self._cells[pack]
        if table is None or table.shape[0] < top:
            grown = np.full(max(top, 0), np.nan)
            if table is not None:
                grown[: table.shape[0]] = table
            table = self._cells[pack] = grown
        if cells:
            idx = np.fromiter(cells.keys(), dtype=np.intp, count=len(cells))
            table[idx] = np.fromiter(cells.values(), dtype=np.float64, count=len(cells))
        if invalid:
            table[list(invalid)] = np.nan
        low = float(np.fmin.reduce(table)) if table.size else math.nan
        if math.isfinite(low):  # at least one valid cell known
            self._values[_VMIN, pack] = low
            self._values[_VMAX, pack] = float(np.fmax.reduce(table))
            self._updated[_VMIN, pack] = now_s
            self._updated[_VMAX, pack] = now_s

    def update_site(self, values: Mapping[str, float], *, now_s: float) -> None:
        """Record site values received at ``now_s``."""
        self._site.update({k: float(v) for k, v in values.items()})
        self._site_updated_s = now_s

    def age_s(self, now_s: float) -> FloatArray:
        """Per pack, the age of its oldest stored quantity [s] (inf if never received)."""
        return np.asarray(now_s - self._updated.min(axis=0), dtype=np.float64)

    def stale(self, now_s: float) -> BoolArray:
        """Per pack, whether the watchdog has expired."""
        return np.asarray(self.age_s(now_s) > self.stale_after_s)

    def site(self, now_s: float) -> SiteSnapshot:
        """The site's latest values and whether they are fresh."""
        age = now_s - self._site_updated_s
        return SiteSnapshot(
            demand_w=self._site.get("demand_w", 0.0),
            price_per_kwh=self._site.get("price_per_kwh", 0.0),
            time_of_day_s=self._site.get("time_of_day_s", math.nan),
            ambient_c=self._site.get("ambient_c", math.nan),
            fresh=bool(age <= self.site_stale_after_s),
            age_s=float(age),
        )

    def site_fresh(self, now_s: float) -> bool:
        """Whether the site values arrived within the site timeout."""
        return bool(now_s - self._site_updated_s <= self.site_stale_after_s)

    def valid(self, now_s: float) -> BoolArray:
        """Per pack: fresh and every stored value finite (what the shield may use)."""
        return np.asarray(~self.stale(now_s) & np.isfinite(self._values).all(axis=0))

    def fleet_state(self, now_s: float) -> FleetState:
        """The fleet as the shield sees it; ``valid`` is False for stale or incomplete packs.

        Cell voltage and temperature are the midpoints of their windows. Missing values of
        invalid packs read as NaN (the shield treats invalid packs as unavailable); the site
        demand is 0 when the site is stale.
        """
        v = self._values
        site = self.site(now_s)
        return FleetState(
            soc=v[_SOC].copy(),
            soh=v[_SOH].copy(),
            temperature_c=(v[_TMIN] + v[_TMAX]) * 0.5,
            cell_voltage_v=(v[_VMIN] + v[_VMAX]) * 0.5,
            current_a=v[_CUR].copy(),
            demand_w=site.demand_w if site.fresh else 0.0,
            valid=self.valid(now_s),
        )

    def pack_voltage_v(self, pack: int, series: int) -> float:
        """Pack voltage estimate [V]: mid cell voltage × cells in series (NaN if unknown)."""
        return float((self._values[_VMIN, pack] + self._values[_VMAX, pack]) * 0.5 * series)

    def pack_voltages_v(self, series: FloatArray) -> list[float]:
        """:meth:`pack_voltage_v` of every pack at once (``series``: cells in series)."""
        v = self._values
        return ((v[_VMIN] + v[_VMAX]) * 0.5 * series).tolist()  # type: ignore[no-any-return]

    def pack_voltages_array_v(self, series: FloatArray) -> FloatArray:
        """:meth:`pack_voltages_v` as an array."""
        v = self._values
        return np.asarray((v[_VMIN] + v[_VMAX]) * 0.5 * series, dtype=np.float64)

    def window(self, pack: int) -> dict[str, tuple[float, float]]:
        """One pack's latest ``(min, max)`` of cell voltage and temperature, and SoC etc."""
        v = self._values[:, pack]
        return {
            "soc": (float(v[_SOC]), float(v[_SOC])),
            "soh": (float(v[_SOH]), float(v[_SOH])),
            "current_a": (float(v[_CUR]), float(v[_CUR])),
            "cell_voltage_v": (float(v[_VMIN]), float(v[_VMAX])),
            "temperature_c": (float(v[_TMIN]), float(v[_TMAX])),
        }

    def pack_values(self, pack: int) -> tuple[float, ...]:
        """One pack's stored values in :data:`STORED_FIELDS` order (for the limit check)."""
        return tuple(self._values[:, pack].tolist())

    def has_all(self, pack: int) -> bool:
        """Whether every stored quantity of ``pack`` has been received at least once."""
        if self._complete[pack]:
            return True
        complete = self._complete[pack] = bool(np.isfinite(self._updated[:, pack]).all())
        return complete
