"""PyBaMM parameter sets behind each chemistry, and the cell facts the twins derive from them.

Every number a twin uses about a cell (capacity, voltage window, stoichiometry window, thermal
mass, cooling area) is read from the chemistry's published PyBaMM parameter set
(:data:`pulsebms.envs.chemistry.CHEMISTRIES`). Where a set lacks what the lumped thermal or
SEI submodels need, the gap is filled explicitly in :data:`SUPPLEMENTS` and said here:

* ``Prada2013`` (LFP, A123 ANR26650M1) has no thermal, current-collector or SEI parameters.
  Cell volume and cooling area come from the 26650 format (26 mm × 65 mm cylinder); densities,
  heat capacities, current collectors and SEI kinetics are the ``Chen2020`` values (generic
  copper/aluminium foils and the Single et al. 2018 reaction-limited SEI values PyBaMM ships
  with ``Chen2020``). They make the LFP temperature and SEI fade plausible, not fitted.

The **cell capacity** used for SoC everywhere is the charge the electrodes exchange between the
parameter set's 0 % and 100 % open-circuit voltages (``pybamm.lithium_ion.
get_min_max_stoichiometries``), so that SoC, stoichiometry and voltage agree inside the
physics model. It differs from the sets' ``Nominal cell capacity [A.h]`` (Chen2020 5.15 vs
5.0 A.h; Marquis2019 0.87 vs 0.68 A.h), which is reported as ``nominal_capacity_ah``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from pulsebms.envs.chemistry import get_chemistry

__all__ = ["SUPPLEMENTS", "CellFacts", "cell_facts", "parameter_values"]

_CHEN_KEYS_FOR_LFP = (
    "Negative current collector thickness [m]",
    "Negative current collector conductivity [S.m-1]",
    "Positive current collector thickness [m]",
    "Positive current collector conductivity [S.m-1]",
    "Negative current collector density [kg.m-3]",
    "Negative current collector specific heat capacity [J.kg-1.K-1]",
    "Negative electrode density [kg.m-3]",
    "Negative electrode specific heat capacity [J.kg-1.K-1]",
    "Separator density [kg.m-3]",
    "Separator specific heat capacity [J.kg-1.K-1]",
    "Positive electrode density [kg.m-3]",
    "Positive electrode specific heat capacity [J.kg-1.K-1]",
    "Positive current collector density [kg.m-3]",
    "Positive current collector specific heat capacity [J.kg-1.K-1]",
    "SEI growth activation energy [J.mol-1]",
    "SEI reaction exchange current density [A.m-2]",
    "Initial SEI thickness [m]",
    "SEI partial molar volume [m3.mol-1]",
    "SEI resistivity [Ohm.m]",
    "SEI open-circuit potential [V]",
    "Ratio of lithium moles to SEI moles",
    "Total heat transfer coefficient [W.m-2.K-1]",
)

_R_26650_M = 0.013
_H_26650_M = 0.065

SUPPLEMENTS: dict[str, dict[str, float]] = {
    "LFP": {
        "Cell volume [m3]": math.pi * _R_26650_M**2 * _H_26650_M,
        "Cell cooling surface area [m2]": 2 * math.pi * _R_26650_M * (_H_26650_M + _R_26650_M),
    },
}
"""Per chemistry, parameters added to the published set (see the module docstring)."""


@functools.cache
def _base_parameter_values(chemistry: str) -> Any:
    import pybamm

    chem = get_chemistry(chemistry)
    values = pybamm.ParameterValues(chem.parameter_set)
    if chem.name == "LFP":
        donor = pybamm.ParameterValues("Chen2020")
        extra: dict[str, Any] = {key: donor[key] for key in _CHEN_KEYS_FOR_LFP}
        extra.update(SUPPLEMENTS["LFP"])
        values.update(extra, check_already_exists=False)
    return values


def parameter_values(chemistry: str) -> Any:
    """A fresh copy of the chemistry's PyBaMM parameter set, supplemented where needed.

    Args:
        chemistry: Chemistry name (``"LFP"``, ``"NMC"``, ``"LCO"``).

    Returns:
        A ``pybamm.ParameterValues`` the caller may modify.
    """
    return _base_parameter_values(get_chemistry(chemistry).name).copy()


@dataclass(frozen=True)
class CellFacts:
    """What the twins need to know about one cell of a chemistry (read from PyBaMM).

    Attributes:
        chemistry: Chemistry name.
        parameter_set: PyBaMM parameter set name.
        capacity_ah: Charge between the 0 % and 100 % OCV points [A.h] (SoC reference).
        nominal_capacity_ah: The set's ``Nominal cell capacity [A.h]``.
        voltage_min_v: Lower voltage cut-off [V].
        voltage_max_v: Upper voltage cut-off [V].
        x_0: Negative stoichiometry at SoC 0.
        x_100: Negative stoichiometry at SoC 1.
        y_0: Positive stoichiometry at SoC 0.
        y_100: Positive stoichiometry at SoC 1.
        c_n_max_mol_m3: Maximum negative particle concentration [mol/m³].
        c_p_max_mol_m3: Maximum positive particle concentration [mol/m³].
        cell_volume_m3: Cell volume [m³].
        cooling_area_m2: Cell cooling surface area [m²].
    """

    chemistry: str
    parameter_set: str
    capacity_ah: float
    nominal_capacity_ah: float
    voltage_min_v: float
    voltage_max_v: float
    x_0: float
    x_100: float
    y_0: float
    y_100: float
    c_n_max_mol_m3: float
    c_p_max_mol_m3: float
    cell_volume_m3: float
    cooling_area_m2: float

    def stoichiometries(self, soc: Any) -> tuple[Any, Any]:
        """Negative and positive stoichiometry at ``soc`` (linear in SoC between the ends)."""
        x = self.x_0 + soc * (self.x_100 - self.x_0)
        y = self.y_0 + soc * (self.y_100 - self.y_0)
        return x, y


@functools.cache
def cell_facts(chemistry: str) -> CellFacts:
    """Cell facts of a chemistry, read once from its parameter set and cached.

    Args:
        chemistry: Chemistry name (``"LFP"``, ``"NMC"``, ``"LCO"``).

    Returns:
        The chemistry's :class:`CellFacts`.

    Example:
        >>> cell_facts("NMC").voltage_max_v
        4.2
    """
    import pybamm

    chem = get_chemistry(chemistry)
    values = _base_parameter_values(chem.name)
    x_0, x_100, y_100, y_0 = pybamm.lithium_ion.get_min_max_stoichiometries(values)
    q_n_ah = float(values.evaluate(pybamm.LithiumIonParameters().n.Q_init))
    return CellFacts(
        chemistry=chem.name,
        parameter_set=chem.parameter_set,
        capacity_ah=float((x_100 - x_0) * q_n_ah),
        nominal_capacity_ah=float(values["Nominal cell capacity [A.h]"]),
        voltage_min_v=float(values["Lower voltage cut-off [V]"]),
        voltage_max_v=float(values["Upper voltage cut-off [V]"]),
        x_0=float(x_0),
        x_100=float(x_100),
        y_0=float(y_0),
        y_100=float(y_100),
        c_n_max_mol_m3=float(values["Maximum concentration in negative electrode [mol.m-3]"]),
        c_p_max_mol_m3=float(values["Maximum concentration in positive electrode [mol.m-3]"]),
        cell_volume_m3=float(values["Cell volume [m3]"]),
        cooling_area_m2=float(values["Cell cooling surface area [m2]"]),
    )
