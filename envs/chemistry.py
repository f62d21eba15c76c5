"""Cell chemistries known to PulseBMS and the published PyBaMM parameter sets behind them.

This module is plain data (no PyBaMM import) so that configs, specs and the numpy-only
safety core can name a chemistry without loading the physics stack.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHEMISTRIES", "Chemistry", "get_chemistry"]


@dataclass(frozen=True)
class Chemistry:
    """A cell chemistry and the PyBaMM parameter set that models it.

    Attributes:
        name: Short upper-case name used everywhere in configs (``"LFP"``).
        parameter_set: Name accepted by ``pybamm.ParameterValues``.
        citation: The paper the parameter set comes from.
        description: Electrode pair and cell format.
    """

    name: str
    parameter_set: str
    citation: str
    description: str


CHEMISTRIES: dict[str, Chemistry] = {
    "LFP": Chemistry(
        name="LFP",
        parameter_set="Prada2013",
        citation=(
            "Prada, E. et al. (2013). A simplified electrochemical and thermal aging model of "
            "LiFePO4-graphite Li-ion batteries for power applications. "
            "J. Electrochem. Soc. 160(4), A616."
        ),
        description="LiFePO4 / graphite, A123 ANR26650M1 2.3 Ah cylindrical cell",
    ),
    "NMC": Chemistry(
        name="NMC",
        parameter_set="Chen2020",
        citation=(
            "Chen, C.-H. et al. (2020). Development of experimental techniques for "
            "parameterization of multi-scale lithium-ion battery models. "
            "J. Electrochem. Soc. 167(8), 080534."
        ),
        description="NMC811 / graphite-SiOx, LG M50 5 Ah 21700 cylindrical cell",
    ),
    "LCO": Chemistry(
        name="LCO",
        parameter_set="Marquis2019",
        citation=(
            "Marquis, S. G. et al. (2019). An asymptotic derivation of a single particle model "
            "with electrolyte. J. Electrochem. Soc. 166(15), A3693."
        ),
        description="LiCoO2 / graphite, Kokam SLPB 75106100 0.68 Ah pouch cell",
    ),
}


def get_chemistry(name: str) -> Chemistry:
    """Return the chemistry registered under ``name`` (case-insensitive).

    Args:
        name: Chemistry name such as ``"LFP"``, ``"nmc"``.

    Returns:
        The registered :class:`Chemistry`.

    Raises:
        ValueError: If the chemistry is unknown; the message lists the known ones.

    Example:
        >>> get_chemistry("lfp").parameter_set
        'Prada2013'
    """
    key = name.strip().upper()
    if key not in CHEMISTRIES:
        known = ", ".join(sorted(CHEMISTRIES))
        raise ValueError(f"unknown chemistry {name!r}; known chemistries: {known}")
    return CHEMISTRIES[key]
