"""The policies a coordinator can plan with, built from a :class:`SiteFleet` and one string.

Any object with ``act(observation) -> action`` (the project's
:class:`~pulsebms.agents.type_aliases.Policy` protocol) plans; :func:`make_policy` builds the
usual ones by name:

==================  =========================================================================
spec                policy
==================  =========================================================================
``proportional``    demand split in proportion to usable charge (``rule_soc``,
                    :class:`pulsebms.agents.rules.SocProportionalPolicy`); the default
``equal``           the same power from every pack (``rule_equal``)
``health``          SoC, SoH, cycle life and temperature weighted (``rule_health``), and by
                    remaining useful life where the twin forecasts it
                    (:class:`SiteHealthPolicy`)
``mpc``             receding-horizon MPC (cvxpy, :class:`pulsebms.agents.mpc.MPCPolicy`);
                    the coordinator gives it its demand forecast source over the whole
                    horizon (persistence otherwise) and weights each pack's degradation
                    cost by its remaining useful life
``onnx:PATH``       an exported policy (export folder or ``manifest.json``;
                    :class:`pulsebms.edge_runtime.policy.OnnxPolicy`, sha256 verified)
``sb3:PATH``        a stable-baselines3 ``model.zip`` (``vecnormalize.pkl`` beside it used)
``rllib:PATH``      an RLlib checkpoint folder (:class:`pulsebms.agents.rllib_policy.RLlibPolicy`)
==================  =========================================================================

Heavy stacks load only for the spec that needs them (cvxpy for ``mpc``, torch for ``sb3``,
Ray for ``rllib``).

Example:
    >>> import numpy as np
    >>> from pulsebms.core.observation import fleet_observation_layout
    >>> from pulsebms.safety.state import PackRatings
    >>> from pulsebms.services.coordinator.fleet import SiteFleet
    >>> ratings = PackRatings(("LFP", "LFP"), np.array([16, 16]), np.array([8, 8]),
    ...                       np.array([2.5, 2.5]), np.array([1000.0, 3000.0]))
    >>> fleet = SiteFleet(fleet_observation_layout(("a", "b"), 2, 4000.0), ratings)
    >>> policy, name = make_policy("equal", fleet)
    >>> obs = np.zeros(fleet.layout.size, dtype=np.float32)
    >>> scale = fleet.layout.scales  # stored value × scale = physical value
    >>> for field, value in [("soc", 0.5), ("soh", 1.0), ("temperature_c", 25.0),
    ...                      ("cell_voltage_v", 3.3), ("demand_w", 2000.0)]:
    ...     obs[fleet.layout.slices[field]] = value / scale[field]
    >>> name, policy.act(obs).tolist()
    ('rule_equal', [1.0, 0.3333333432674408])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pulsebms.agents.observation import FleetObservation
from pulsebms.agents.rules import HealthAwarePolicy
from pulsebms.agents.type_aliases import Policy
from pulsebms.core.types import FloatArray
from pulsebms.services.coordinator.fleet import SiteFleet
from pulsebms.services.coordinator.site_health import rul_share

__all__ = ["RULES", "SiteHealthPolicy", "make_policy"]

RULES = {"proportional": "soc", "soc": "soc", "equal": "equal", "health": "health"}
"""Rule spec → :mod:`pulsebms.agents.rules` kind."""


class SiteHealthPolicy(HealthAwarePolicy):
    """:class:`~pulsebms.agents.rules.HealthAwarePolicy`, also weighted by remaining useful life.

    The coordinator calls :meth:`set_remaining_life` before each plan with the twin's RUL
    per pack; each pack's weight is multiplied by :func:`~pulsebms.services.coordinator.
    site_health.rul_share` (``clip(RUL / median RUL, rul_floor, 1)``: a pack due for its end
    of life sooner than the fleet's median takes less; unknown or beyond the horizon: 1).
    The SoH it weights by is the observation's, which the coordinator fills with the twin's
    calibrated SoH where a fresh forecast has it.

    Args:
        *args: :class:`~pulsebms.agents.rules.HealthAwarePolicy` arguments.
        rul_floor: Least RUL factor, in (0, 1].
        **kwargs: :class:`~pulsebms.agents.rules.HealthAwarePolicy` keyword arguments.

    Raises:
        ValueError: If ``rul_floor`` is outside (0, 1].
    """

    name = "rule_health"

    def __init__(self, *args: Any, rul_floor: float = 0.25, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < rul_floor <= 1.0:
            raise ValueError(f"rul_floor must be in (0, 1], got {rul_floor}")
        self.rul_floor = float(rul_floor)
        self.remaining_life_days: FloatArray = np.full(self.n_packs, np.nan)

    def set_remaining_life(self, rul_days: FloatArray) -> None:
        """The RUL per pack for the next plans [days] (``inf``: far; NaN: unknown)."""
        rul = np.asarray(rul_days, dtype=np.float64)
        if rul.shape != (self.n_packs,):
            raise ValueError(f"rul_days must have shape ({self.n_packs},), got {rul.shape}")
        self.remaining_life_days = rul

    def weights(self, fleet: FleetObservation, discharge: bool) -> FloatArray:
        """:meth:`HealthAwarePolicy.weights` × the RUL share."""
        base = super().weights(fleet, discharge)
        out: FloatArray = base * rul_share(self.remaining_life_days, self.rul_floor)
        return out


def _rule(kind: str, fleet: SiteFleet) -> tuple[Policy, str]:
    from pulsebms.agents.observation import ObservationReader
    from pulsebms.agents.rules import EqualSplitPolicy, SocProportionalPolicy
    from pulsebms.safety.limits import stack_limits

    classes = {"soc": SocProportionalPolicy, "equal": EqualSplitPolicy, "health": SiteHealthPolicy}
    lim = stack_limits(fleet.limits, fleet.n_packs)
    cls = classes[kind]
    policy = cls(
        ObservationReader(fleet.layout),
        fleet.rated_power_w,
        capacity_ah=fleet.capacity_ah,
        chemistry=tuple(fleet.ratings.chemistry),
        soc_min=lim.soc_min,
        soc_max=lim.soc_max,
        temperature_max_c=lim.temperature_max_c,
        temperature_min_c=lim.temperature_min_c,
    )
    return policy, cls.name


def _mpc(fleet: SiteFleet, **settings: Any) -> tuple[Policy, str]:
    import numpy as np

    from pulsebms.agents.envinfo import FleetInfo
    from pulsebms.agents.mpc import MPCConfig, MPCPolicy
    from pulsebms.agents.observation import ObservationReader
    from pulsebms.safety.limits import stack_limits

    lim = stack_limits(fleet.limits, fleet.n_packs)
    info = FleetInfo(
        reader=ObservationReader(fleet.layout),
        chemistry=tuple(str(c).upper() for c in fleet.ratings.chemistry),
        rated_power_w=fleet.rated_power_w,
        capacity_ah=fleet.capacity_ah,
        energy_wh=fleet.nominal_energy_wh(),
        dt_s=fleet.dt_s,
        soc_min=lim.soc_min,
        soc_max=lim.soc_max,
        current_max_a=np.minimum(lim.current_max_a, -lim.current_min_a),
        c_rate_max=lim.c_rate_max,
        temperature_min_c=lim.temperature_min_c,
        temperature_max_c=lim.temperature_max_c,
        ratings=fleet.ratings,
        limits=fleet.limits,
    )
    policy = MPCPolicy(info, MPCConfig(**settings), shield=fleet.shield_obj, name="mpc")
    return policy, "mpc"


def _onnx(path: Path, fleet: SiteFleet) -> tuple[Policy, str]:
    from pulsebms.edge_runtime.manifest import load_manifest
    from pulsebms.edge_runtime.policy import OnnxPolicy

    manifest_path = path / "manifest.json" if path.is_dir() else path
    manifest = load_manifest(manifest_path)
    if manifest.observation != fleet.layout:
        raise ValueError(
            f"{manifest_path}: the policy's observation layout is not the site fleet's "
            "(build the coordinator's SiteFleet from this manifest)"
        )
    policy = OnnxPolicy.from_manifest(manifest)
    return policy, f"onnx:{manifest.source.algorithm}"


def _sb3(path: Path) -> tuple[Policy, str]:
    from pulsebms.agents.policy import SB3Policy

    vecnorm = path.with_name("vecnormalize.pkl")
    policy = SB3Policy.load(path, vecnorm if vecnorm.exists() else None)
    return policy, f"sb3:{type(policy.model).__name__}"


def _rllib(path: Path) -> tuple[Policy, str]:
    from pulsebms.agents.rllib_policy import RLlibPolicy

    return RLlibPolicy.from_checkpoint(path), "rllib"


def make_policy(spec: str, fleet: SiteFleet, **settings: Any) -> tuple[Policy, str]:
    """Build a policy for ``fleet`` from a spec string (see the module's table).

    Args:
        spec: ``proportional``, ``equal``, ``health``, ``mpc``, ``onnx:PATH``, ``sb3:PATH``
            or ``rllib:PATH``.
        fleet: The site fleet (layout, ratings, limits).
        **settings: ``mpc`` only: :class:`pulsebms.agents.mpc.MPCConfig` fields.

    Returns:
        The policy and the name allocations report (``policy`` field).

    Raises:
        ValueError: On an unknown spec, settings for a policy that takes none, or an
            ONNX policy whose layout differs from the fleet's.
        FileNotFoundError: If a path does not exist.
    """
    kind, _, arg = spec.partition(":")
    if kind != "mpc" and settings:
        raise ValueError(f"policy {kind!r} takes no settings, got {sorted(settings)}")
    if kind in RULES and not arg:
        return _rule(RULES[kind], fleet)
    if kind == "mpc" and not arg:
        return _mpc(fleet, **settings)
    if kind in ("onnx", "sb3", "rllib") and arg:
        path = Path(arg)
        if not path.exists():
            raise FileNotFoundError(f"{kind} policy: {path} does not exist")
        if kind == "onnx":
            return _onnx(path, fleet)
        return _sb3(path) if kind == "sb3" else _rllib(path)
    raise ValueError(
        f"unknown policy {spec!r}; use one of {sorted(RULES)}, 'mpc', 'onnx:PATH', "
        "'sb3:PATH', 'rllib:PATH'"
    )
