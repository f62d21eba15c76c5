"""Pack specifications: everything a user states about one pack, in plain Python data.

A pack is given either by its cell counts (``series`` × ``parallel``) or by its **energy**
(``energy_kwh``) and chemistry: the parallel count is then resolved from the chemistry's
cell (its capacity and mean open-circuit voltage from the shipped cell tables,
:class:`pulsebms.safety.cell_model.CellModel`), so ``{chemistry: LFP, energy_kwh: 80}`` is
a valid pack in a Hydra fleet config as much as in Python.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PARALLEL",
    "DEFAULT_SERIES",
    "SERIES_BY_CHEMISTRY",
    "PackSpec",
    "cell_energy_wh",
]

DEFAULT_SERIES = 14
"""Cells in series of a pack stated by cell counts without ``series``."""
DEFAULT_PARALLEL = 4
"""Cells in parallel of a pack stated by cell counts without ``parallel``."""
SERIES_BY_CHEMISTRY: dict[str, int] = {"LFP": 16, "NMC": 14, "LCO": 14}
"""Cells in series of a pack stated by energy without ``series``: one ≈ 51 V module
(16 × 3.2 V LFP, 14 × 3.7 V NMC/LCO), the shape of :func:`pulsebms.envs.mixed_fleet`."""


@functools.cache
def cell_energy_wh(chemistry: str) -> float:
    """Nominal energy of one cell of a chemistry [W.h]: capacity × mean OCV over SoC 0…1.

    Both come from the shipped cell tables (numpy only, no PyBaMM); the ECM twin prices a
    pack's energy the same way, so a pack stated by energy has that energy in the env
    (``FleetEnv.pack_energy_kwh``) up to the rounding of the parallel count.

    Args:
        chemistry: Chemistry name (case-insensitive).

    Returns:
        The cell's nominal energy [W.h].

    Raises:
        ValueError: If the chemistry has no cell tables.

    Example:
        >>> 7.0 < cell_energy_wh("LFP") < 8.0  # A123 2.3 Ah at ≈ 3.3 V
        True
    """
    import numpy as np

    from pulsebms.safety.cell_model import CellModel  # lazy: reads the shipped tables

    model = CellModel.shipped()
    spec = model.ocv_grid
    soc = spec.start + spec.step * np.arange(spec.size, dtype=np.float64)
    ocv = np.asarray(model.ocv_v(chemistry, soc), dtype=np.float64)
    mean_ocv_v = float(np.trapezoid(ocv, soc) / (soc[-1] - soc[0]))
    return model.capacity_ah(chemistry) * mean_ocv_v


@dataclass(frozen=True)
class PackSpec:
    """One battery pack of a fleet.

    A pack is simulated as **one cell scaled by its series and parallel counts**: pack
    voltage = ``series`` × cell voltage, pack current = ``parallel`` × cell current. Cell-to-cell
    spread inside a pack is not modelled.

    Sizes. ``0`` (the default) for ``series`` or ``parallel`` means *automatic*:

    * without ``energy_kwh``: ``series`` = :data:`DEFAULT_SERIES` (14), ``parallel`` =
      :data:`DEFAULT_PARALLEL` (4), as always;
    * with ``energy_kwh``: ``series`` = :data:`SERIES_BY_CHEMISTRY` (one ≈ 51 V module;
      give ``series`` for another voltage) and ``parallel`` =
      ``round(energy_kwh / (series × cell_energy_wh / 1000))`` (≥ 1), so the pack's energy
      is ``energy_kwh`` within half a string of ``series`` cells. A ``parallel`` given
      with ``energy_kwh`` must equal that count.

    After construction ``series`` and ``parallel`` always hold the resolved counts (so
    ``dataclasses.replace`` of a resolved spec resolves to the same counts).

    Attributes:
        chemistry: Chemistry name, one of :data:`pulsebms.envs.chemistry.CHEMISTRIES`.
        series: Cells in series (≥ 1; 0: automatic, see above).
        parallel: Cells in parallel (≥ 1; 0: automatic, see above).
        initial_soc: State of charge at reset, fraction in [0, 1].
        initial_soh: State of health at reset, fraction in (0, 1].
        rated_power_w: Rated pack power [W]; ``None`` means 1 C at nominal voltage.
        initial_temperature_c: Pack temperature at reset [°C]; ``None`` means ambient.
        heat_transfer_coefficient_w_m2k: Lumped cooling coefficient to ambient [W/(m².K)].
        name: Label used in logs, plots and ``info`` (defaults to ``"<chem>-<index>"``).
        energy_kwh: Stated nominal pack energy [kWh] (> 0), or ``None`` (sizes from the
            cell counts). The resolved energy is :attr:`nominal_energy_kwh`.

    Raises:
        ValueError: From construction, naming the field, on a bad value, an unknown
            chemistry when ``energy_kwh`` is given, an energy below half a string, or a
            ``parallel`` that contradicts ``energy_kwh``.

    Example:
        >>> PackSpec("NMC", series=14, parallel=4, initial_soc=0.6).chemistry
        'NMC'
        >>> PackSpec("NMC").series, PackSpec("NMC").parallel
        (14, 4)
        >>> pack = PackSpec("LFP", energy_kwh=80.0)
        >>> pack.series, pack.parallel
        (16, 679)
        >>> round(pack.nominal_energy_kwh, 1)
        80.0
    """

    chemistry: str
    series: int = 0
    parallel: int = 0
    initial_soc: float = 0.5
    initial_soh: float = 1.0
    rated_power_w: float | None = None
    initial_temperature_c: float | None = None
    heat_transfer_coefficient_w_m2k: float = 10.0
    name: str = ""
    energy_kwh: float | None = None

    def __post_init__(self) -> None:
        for count in ("series", "parallel"):
            value = getattr(self, count)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(
                    f"PackSpec.{count} must be an integer >= 1 (or 0: automatic), got {value!r}"
                )
        if self.energy_kwh is None:
            series = int(self.series) or DEFAULT_SERIES
            parallel = int(self.parallel) or DEFAULT_PARALLEL
        else:
            series, parallel = self._resolve_energy(float(self.energy_kwh))
        object.__setattr__(self, "series", series)
        object.__setattr__(self, "parallel", parallel)
        if not 0.0 <= self.initial_soc <= 1.0:
            raise ValueError(f"PackSpec.initial_soc must be in [0, 1], got {self.initial_soc}")
        if not 0.0 < self.initial_soh <= 1.0:
            raise ValueError(f"PackSpec.initial_soh must be in (0, 1], got {self.initial_soh}")
        if self.rated_power_w is not None and not self.rated_power_w > 0:
            raise ValueError(f"PackSpec.rated_power_w must be > 0, got {self.rated_power_w}")
        if not self.heat_transfer_coefficient_w_m2k > 0:
            raise ValueError(
                "PackSpec.heat_transfer_coefficient_w_m2k must be > 0, got "
                f"{self.heat_transfer_coefficient_w_m2k}"
            )

    def _resolve_energy(self, energy_kwh: float) -> tuple[int, int]:
        """``(series, parallel)`` of a pack stated by energy (see the class docstring)."""
        from pulsebms.envs.chemistry import get_chemistry

        if not (math.isfinite(energy_kwh) and energy_kwh > 0.0):
            raise ValueError(f"PackSpec.energy_kwh must be finite and > 0, got {energy_kwh!r}")
        chem = get_chemistry(str(self.chemistry)).name
        series = int(self.series) or SERIES_BY_CHEMISTRY.get(chem, DEFAULT_SERIES)
        string_kwh = series * cell_energy_wh(chem) / 1000.0
        derived = round(energy_kwh / string_kwh)
        if derived < 1:
            raise ValueError(
                f"PackSpec.energy_kwh={energy_kwh} is below half a string of {series} {chem} "
                f"cells ({string_kwh:.4g} kWh); give fewer cells in series"
            )
        if self.parallel and int(self.parallel) != derived:
            raise ValueError(
                f"PackSpec.parallel={self.parallel} contradicts energy_kwh={energy_kwh} "
                f"({series} in series need parallel={derived}); give one of them"
            )
        return series, derived

    @classmethod
    def from_energy(
        cls,
        chemistry: str,
        energy_kwh: float,
        *,
        series: int = 0,
        initial_soc: float = 0.5,
        initial_soh: float = 1.0,
        rated_power_w: float | None = None,
        initial_temperature_c: float | None = None,
        heat_transfer_coefficient_w_m2k: float = 10.0,
        name: str = "",
    ) -> PackSpec:
        """A pack of ``energy_kwh`` of ``chemistry``, the parallel count resolved from its cell.

        Args:
            chemistry: Chemistry name.
            energy_kwh: Nominal pack energy [kWh].
            series: Cells in series (0: :data:`SERIES_BY_CHEMISTRY`).
            initial_soc: See the class attributes.
            initial_soh: See the class attributes.
            rated_power_w: See the class attributes.
            initial_temperature_c: See the class attributes.
            heat_transfer_coefficient_w_m2k: See the class attributes.
            name: See the class attributes.

        Returns:
            The spec.

        Example:
            >>> PackSpec.from_energy("NMC", 60.0, series=112).parallel
            28
        """
        return cls(
            chemistry,
            series=series,
            initial_soc=initial_soc,
            initial_soh=initial_soh,
            rated_power_w=rated_power_w,
            initial_temperature_c=initial_temperature_c,
            heat_transfer_coefficient_w_m2k=heat_transfer_coefficient_w_m2k,
            name=name,
            energy_kwh=energy_kwh,
        )

    @property
    def nominal_energy_kwh(self) -> float:
        """Nominal energy of the resolved pack [kWh]: series × parallel × cell energy."""
        return self.series * self.parallel * cell_energy_wh(self.chemistry) / 1000.0
