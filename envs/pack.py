"""Pack specifications: everything a user states about one pack, in plain Python data."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PackSpec"]


@dataclass(frozen=True)
class PackSpec:
    """One battery pack of a fleet.

    A pack is simulated as **one cell scaled by its series and parallel counts**: pack
    voltage = ``series`` × cell voltage, pack current = ``parallel`` × cell current. Cell-to-cell
    spread inside a pack is not modelled.

    Attributes:
        chemistry: Chemistry name, one of :data:`pulsebms.envs.chemistry.CHEMISTRIES`.
        series: Cells in series (≥ 1).
        parallel: Cells in parallel (≥ 1).
        initial_soc: State of charge at reset, fraction in [0, 1].
        initial_soh: State of health at reset, fraction in (0, 1].
        rated_power_w: Rated pack power [W]; ``None`` means 1 C at nominal voltage.
        initial_temperature_c: Pack temperature at reset [°C]; ``None`` means ambient.
        heat_transfer_coefficient_w_m2k: Lumped cooling coefficient to ambient [W/(m².K)].
        name: Label used in logs, plots and ``info`` (defaults to ``"<chem>-<index>"``).

    Example:
        >>> PackSpec("NMC", series=14, parallel=4, initial_soc=0.6).chemistry
        'NMC'
    """

    chemistry: str
    series: int = 14
    parallel: int = 4
    initial_soc: float = 0.5
    initial_soh: float = 1.0
    rated_power_w: float | None = None
    initial_temperature_c: float | None = None
    heat_transfer_coefficient_w_m2k: float = 10.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.series < 1 or self.parallel < 1:
            raise ValueError(
                f"PackSpec.series and PackSpec.parallel must be >= 1, got {self.series}, "
                f"{self.parallel}"
            )
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
