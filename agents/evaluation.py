"""Evaluation harness: any policy, any registered env, scenarios × seeds → one KPI table.

Each policy is built per environment by a factory (rules and the MPC read the env's layout,
ratings and limits; the oracle MPC reads its scenario), rolled out for one episode per
(scenario, seed), and scored by :data:`KPIS`. Every KPI is also reported divided by the
rule-based baseline's value (CityLearn style: < 1 is better than the baseline for costs),
and the total cost by the **no-battery** reference: the same scenario and seed with the
fleet idle (:data:`NO_BATTERY`, CityLearn's "without storage" baseline). A ratio whose
reference is near zero (:data:`NEAR_ZERO`) is NaN, never 1 or a huge number.

Every policy is accounted for by the same shield: the wrapper in the loop. An MPC that
projects its own action (:class:`pulsebms.agents.mpc.MPCPolicy` with a shield) is evaluated
on its plan's first step (:func:`behind_shield`), so its interventions and pre-shield
violations are counted like a rule's or an agent's.

Example:
    >>> from pulsebms.agents import baseline_factories, evaluate_policies
    >>> table = evaluate_policies(  # doctest: +SKIP
    ...     baseline_factories(["rule_soc", "rule_equal", "mpc"]),
    ...     env_id="PulseBMS/FleetSmall-v0", scenarios=["default", "tou"], seeds=[0, 1],
    ... )
    >>> print(table.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pulsebms.agents.env_factory import fleet_env, make_env
from pulsebms.agents.policy import reset_policy
from pulsebms.agents.type_aliases import Policy
from pulsebms.core.types import FleetEnvLike, FloatArray
from pulsebms.safety.results import INTERVENTION_TOLERANCE, count_interventions

__all__ = [
    "INTERVENTION_TOLERANCE",
    "KPIS",
    "NEAR_ZERO",
    "NO_BATTERY",
    "EpisodeTrace",
    "KPITable",
    "PolicyFactory",
    "behind_shield",
    "evaluate_policies",
    "plot_episode",
    "plot_kpis",
    "rollout",
]

PolicyFactory = Callable[[gym.Env[Any, Any]], Policy]
"""Builds a policy for one environment instance (``lambda env: policy`` for fixed ones)."""

KPIS: dict[str, str] = {
    "total_cost": "energy + degradation + unserved-load + fault penalties (= −return) [currency]",
    "energy_cost": "energy cost over the episode [currency]",
    "degradation_cost": "degradation cost over the episode [currency]",
    "soh_loss_pct": "mean SoH lost per pack over the episode [%]",
    "unserved_energy_kwh": "demand the fleet did not serve [kWh]",
    "violations": "constraint violations reported by the env (after the shield) [count]",
    "shield_interventions": (
        "pack-steps whose set-point the shield changed by more than INTERVENTION_TOLERANCE [count]"
    ),
    "pre_shield_violations": (
        "share of steps whose requested (pre-shield) action would have violated a limit, as "
        "the shield predicts it (the measured violations when no shield is in the loop) [1/step]"
    ),
    "constraint_cost": (
        "summed pre-shield violation cost (info cost_pre_shield, else cost) [normalised units]"
    ),
    "soc_spread": "mean over time of max − min SoC across packs [fraction]",
    "return": "sum of rewards",
    "steps": "episode length [steps]",
}
"""The KPI columns, in table order, with their meaning and unit."""

_LOWER_IS_BETTER = ("energy_cost", "degradation_cost", "soh_loss_pct", "unserved_energy_kwh")

NO_BATTERY = "no_battery"
"""Name of the no-battery reference rows: the fleet idle, its degradation not charged (a
site without storage ages no battery), so its total cost is the site's energy and
unserved-load cost alone."""

NEAR_ZERO: dict[str, float] = {
    "violations": 0.5,
    "shield_interventions": 0.5,
    "pre_shield_violations": 1e-3,
    "constraint_cost": 1e-6,
    "soh_loss_pct": 1e-6,
    "unserved_energy_kwh": 1e-6,
}
"""Per KPI, the reference magnitude below which a ratio is NaN (fewer than one count, a rate
under 0.1 %, ...); other KPIs use ``1e-6``."""

_NEAR_ZERO_DEFAULT = 1e-6

_INFO_KEYS: dict[str, tuple[str, ...]] = {
    "total_cost": ("total_cost_eur", "total_cost"),
    "energy_cost": ("energy_cost_eur", "energy_cost"),
    "degradation_cost": ("degradation_cost_eur", "degradation_cost"),
    "unserved_energy_kwh": ("unserved_energy_kwh",),
    "unserved_energy_wh": ("unserved_energy_wh",),
    "unserved_power_w": ("unserved_w", "unserved_power_w"),
}


def _info_number(info: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in info:
            return float(np.sum(info[name]))
        reward_terms = info.get("reward_terms")
        if isinstance(reward_terms, Mapping) and name in reward_terms:
            return float(np.sum(reward_terms[name]))
    return None


def _violation_count(info: Mapping[str, Any]) -> int:
    violations = info.get("violations")
    if violations is None:
        return int(float(info.get("cost", 0.0)) > 0.0)
    return len(violations)


def _pre_shield_cost(info: Mapping[str, Any]) -> float:
    for key in ("cost_pre_shield", "cost"):
        if key in info:
            return float(info[key])
    return 0.0


def _pre_shield_violated(info: Mapping[str, Any]) -> bool:
    if "cost_pre_shield" in info:
        return float(info["cost_pre_shield"]) > 0.0
    return _violation_count(info) > 0


def _interventions(info: Mapping[str, Any]) -> float:
    """Pack-steps the shield changed (:func:`pulsebms.safety.results.count_interventions`).

    The request is clipped to the action space first (the env clips it anyway), so the one
    definition of the shield wrapper applies to every policy.
    """
    shield = info.get("shield")
    if isinstance(shield, Mapping) and "requested" in shield and "applied" in shield:
        requested = np.asarray(shield["requested"], dtype=np.float64).reshape(-1)
        requested = np.clip(np.nan_to_num(requested, nan=0.0), -1.0, 1.0)
        applied = np.asarray(shield["applied"], dtype=np.float64).reshape(-1)
        if requested.shape == applied.shape:
            return float(count_interventions(requested, applied, INTERVENTION_TOLERANCE))
    return float(_intervened(info))


def _intervened(info: Mapping[str, Any]) -> bool:
    for key in ("shield_intervened", "shield_interventions", "shield"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            for sub in ("intervened", "count", "n_interventions"):
                if sub in value:
                    return bool(np.any(value[sub]))
            continue
        return bool(np.any(value))
    return False


@dataclass
class EpisodeTrace:
    """Per-step record of one episode (arrays of shape ``(steps, n_packs)`` unless noted).

    Attributes:
        soc: SoC per pack.
        soh: SoH per pack.
        temperature_c: Temperature per pack [°C].
        action: Action the policy proposed (normalised power).
        current_a: Pack current the twin applied [A], + = discharge.
        power_w: Pack power delivered (after the shield) [W], + = discharge.
        demand_w: Site demand per step [W], shape ``(steps,)``.
        pack_names: Pack labels.
        dt_s: Control interval [s].
        kpis: The episode's KPIs (keys of :data:`KPIS`).
    """

    soc: FloatArray
    soh: FloatArray
    temperature_c: FloatArray
    action: FloatArray
    current_a: FloatArray
    power_w: FloatArray
    demand_w: FloatArray
    pack_names: tuple[str, ...] = ()
    dt_s: float = 1.0
    kpis: dict[str, float] = field(default_factory=dict)


def _state_arrays(
    base: FleetEnvLike,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    state = base.fleet_state()
    return (
        np.asarray(state.soc, dtype=np.float64),
        np.asarray(state.soh, dtype=np.float64),
        np.asarray(state.temperature_c, dtype=np.float64),
        np.asarray(state.current_a, dtype=np.float64),
        float(state.demand_w),
    )


def rollout(
    env: gym.Env[Any, Any], policy: Policy, *, seed: int, max_steps: int | None = None
) -> EpisodeTrace:
    """Run one episode of ``policy`` in ``env`` and score it.

    Args:
        env: The (shield-wrapped) environment.
        policy: Any policy.
        seed: Seed of ``env.reset``.
        max_steps: Stop after this many steps (the env's horizon when ``None``).

    Returns:
        The trace with its KPIs.

    Raises:
        TypeError: If the unwrapped env is not a fleet env
            (:class:`pulsebms.core.types.FleetEnvLike`).
    """
    base = fleet_env(env)
    obs, _ = env.reset(seed=seed)
    reset_policy(policy)
    soc, soh, temp, cur, _demand = _state_arrays(base)
    soh0 = soh.copy()
    rows: dict[str, list[Any]] = {
        k: [] for k in ("soc", "soh", "temp", "act", "cur", "power", "demand")
    }
    totals = dict.fromkeys(KPIS, 0.0)
    dt_h = float(base.dt_s) / 3600.0
    steps = 0
    while True:
        action = np.asarray(policy.act(obs), dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        soc, soh, temp, cur, demand = _state_arrays(base)
        for key, value in (
            ("soc", soc),
            ("soh", soh),
            ("temp", temp),
            ("act", action),
            ("cur", cur),
            ("power", np.asarray(info.get("pack_power_w", np.full(soc.shape, np.nan)), float)),
            ("demand", float(info.get("net_load_w", demand))),
        ):
            rows[key].append(value)
        totals["return"] += float(reward)
        for kpi in ("total_cost", "energy_cost", "degradation_cost"):
            totals[kpi] += _info_number(info, _INFO_KEYS[kpi]) or 0.0
        unserved = _info_number(info, _INFO_KEYS["unserved_energy_kwh"])
        if unserved is None:
            wh = _info_number(info, _INFO_KEYS["unserved_energy_wh"])
            w = _info_number(info, _INFO_KEYS["unserved_power_w"])
            unserved = wh / 1000.0 if wh is not None else (w or 0.0) * dt_h / 1000.0
        totals["unserved_energy_kwh"] += unserved
        totals["violations"] += _violation_count(info)
        totals["shield_interventions"] += _interventions(info)
        totals["pre_shield_violations"] += float(_pre_shield_violated(info))
        totals["constraint_cost"] += _pre_shield_cost(info)
        totals["soc_spread"] += float(np.max(soc) - np.min(soc)) if soc.size else 0.0
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    totals["soc_spread"] /= max(steps, 1)
    totals["pre_shield_violations"] /= max(steps, 1)
    totals["soh_loss_pct"] = float(np.mean(soh0 - soh) * 100.0) if soh.size else 0.0
    totals["steps"] = float(steps)
    return EpisodeTrace(
        soc=np.asarray(rows["soc"]),
        soh=np.asarray(rows["soh"]),
        temperature_c=np.asarray(rows["temp"]),
        action=np.asarray(rows["act"], dtype=np.float64),
        current_a=np.asarray(rows["cur"]),
        power_w=np.asarray(rows["power"]),
        demand_w=np.asarray(rows["demand"]),
        pack_names=tuple(base.observation_layout.pack_names),
        dt_s=dt_h * 3600.0,
        kpis=totals,
    )


def _ratio(value: float, reference: float, kpi: str) -> float:
    if math.isnan(reference) or abs(reference) < NEAR_ZERO.get(kpi, _NEAR_ZERO_DEFAULT):
        return math.nan
    return value / abs(reference)


@dataclass
class KPITable:
    """KPIs per policy (mean over scenarios × seeds) and normalised by a baseline.

    Attributes:
        rows: Per episode: ``policy``, ``scenario``, ``seed`` and every KPI.
        baseline: Policy name the ``*_norm`` columns divide by.
    """

    rows: list[dict[str, Any]]
    baseline: str

    @property
    def policies(self) -> list[str]:
        """Policy names in the order they were evaluated."""
        return list(dict.fromkeys(r["policy"] for r in self.rows))

    @property
    def scenarios(self) -> list[str]:
        """Scenario labels in the order they were evaluated."""
        return list(dict.fromkeys(str(r["scenario"]) for r in self.rows))

    def mean(self, policy: str, kpi: str, scenario: str | None = None) -> float:
        """Mean of ``kpi`` over every episode of ``policy`` (of one ``scenario`` if given)."""
        values = [
            float(r[kpi])
            for r in self.rows
            if r["policy"] == policy and (scenario is None or str(r["scenario"]) == scenario)
        ]
        return float(np.mean(values)) if values else math.nan

    def normalised(self, policy: str, kpi: str, reference: str | None = None) -> float:
        """``mean(policy, kpi) / |mean(reference, kpi)|`` (reference: the baseline).

        NaN when the reference is absent or its mean is near zero (:data:`NEAR_ZERO`):
        a ratio of near-zero KPIs says nothing (0/0 is not "as good as").
        """
        return _ratio(self.mean(policy, kpi), self.mean(reference or self.baseline, kpi), kpi)

    def ratios(
        self, policy: str, kpi: str, reference: str, scenario: str | None = None
    ) -> list[float]:
        """Per episode ``kpi(policy) / |kpi(reference)|`` on the same (scenario, seed).

        Episodes the reference lacks are left out; near-zero references give NaN.
        """
        ref = {
            (str(r["scenario"]), int(r["seed"])): float(r[kpi])
            for r in self.rows
            if r["policy"] == reference
        }
        out = []
        for r in self.rows:
            key = (str(r["scenario"]), int(r["seed"]))
            if r["policy"] != policy or key not in ref:
                continue
            if scenario is not None and key[0] != scenario:
                continue
            out.append(_ratio(float(r[kpi]), ref[key], kpi))
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One row per policy: every KPI's mean and its baseline-normalised value."""
        out = []
        for policy in self.policies:
            row: dict[str, Any] = {"policy": policy}
            for kpi in KPIS:
                row[kpi] = self.mean(policy, kpi)
            for kpi in KPIS:
                if kpi not in ("steps", "return"):
                    row[f"{kpi}_norm"] = self.normalised(policy, kpi)
            if NO_BATTERY in self.policies:
                row["total_cost_x_no_battery"] = self.normalised(policy, "total_cost", NO_BATTERY)
            out.append(row)
        return out

    def to_csv(self, path: str | Path, *, per_episode: bool = False) -> Path:
        """Write the summary (or every episode) as CSV and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows if per_episode else self.summary()
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    def to_markdown(self, kpis: Sequence[str] | None = None) -> str:
        """The summary as a Markdown table (values, then ``(× baseline)`` in brackets)."""
        kpis = list(kpis or [k for k in KPIS if k != "steps"])
        extra = NO_BATTERY in self.policies
        if extra:
            kpis.append("total_cost_x_no_battery")
        lines = [
            "| policy | " + " | ".join(kpis) + " |",
            "| --- | " + " | ".join("---:" for _ in kpis) + " |",
        ]
        for row in self.summary():
            cells = []
            for kpi in kpis:
                cell = "n/a" if math.isnan(row[kpi]) else f"{row[kpi]:.4g}"
                norm = row.get(f"{kpi}_norm")
                if norm is not None and not math.isnan(norm):
                    cell += f" ({norm:.2f}×)"
                cells.append(cell)
            lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
        note = (
            f"\n\nNormalised by `{self.baseline}` (× baseline); no ratio where the reference "
            "is near zero."
        )
        if extra:
            note += (
                f" `total_cost_x_no_battery`: × the same days with the fleet idle ({NO_BATTERY})."
            )
        return "\n".join(lines) + note + "\n"

    def save(self, directory: str | Path, stem: str = "kpis") -> dict[str, Path]:
        """Write ``<stem>.csv``, ``<stem>_episodes.csv`` and ``<stem>.md`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        md = directory / f"{stem}.md"
        md.write_text(self.to_markdown())
        return {
            "csv": self.to_csv(directory / f"{stem}.csv"),
            "episodes_csv": self.to_csv(directory / f"{stem}_episodes.csv", per_episode=True),
            "markdown": md,
        }


def evaluate_policies(
    policies: Mapping[str, PolicyFactory],
    *,
    env_id: str = "PulseBMS/FleetSmall-v0",
    scenarios: Sequence[Any] | None = None,
    seeds: Sequence[int] = (0,),
    baseline: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    plot_dir: str | Path | None = None,
    progress: bool = True,
    env_fn: Callable[..., gym.Env[Any, Any]] | None = None,
    no_battery: bool = True,
    uniform_shield: bool = True,
) -> KPITable:
    """Evaluate every policy on every (scenario, seed) and return one KPI table.

    Args:
        policies: Name → factory building the policy for an env instance.
        env_id: Registered env id.
        scenarios: Scenarios (names or dicts), passed as the env's ``scenario`` argument;
            ``None`` entries keep ``env_kwargs["scenario"]`` or else the env id's default.
            ``None`` (the default): the one scenario ``env_kwargs`` names, else the env
            id's default — a scenario given in ``env_kwargs`` is never replaced.
        seeds: Seeds of ``env.reset``.
        baseline: Policy the ``*_norm`` columns divide by; the first name starting with
            ``"rule"`` (else the first policy) when ``None``.
        env_kwargs: Other env constructor arguments (``fleet``, ``dt_s``, ``fidelity``, ...).
        shield: Evaluate with the shield in the loop (its interventions are a KPI).
        shield_kwargs: Keyword arguments of the shield wrapper (limit overrides, ...).
        max_steps: Cut episodes after this many steps (``None``: the env's horizon).
        plot_dir: Where to write a trace plot per policy (first scenario and seed) and KPI
            bars; nothing is plotted when ``None``.
        progress: Show a progress bar (tqdm).
        env_fn: Replaces :func:`pulsebms.agents.env_factory.make_env` (same signature).
        no_battery: Also roll out the no-battery reference (:data:`NO_BATTERY`) on every
            (scenario, seed), for the ``total_cost_x_no_battery`` column.
        uniform_shield: With the shield on, evaluate every policy through
            :func:`behind_shield` (the wrapper alone projects, for all of them alike).

    Returns:
        The KPI table; the scenario label is the preset's name (a dict's ``name`` or
        ``base``), or the env's scenario name for ``None``.

    Raises:
        ValueError: If no policy is given, ``baseline`` is not one of them, a policy is
            named :data:`NO_BATTERY`, or ``scenarios`` and ``env_kwargs["scenario"]`` are
            both given and differ.
    """
    if not policies:
        raise ValueError("evaluate_policies: no policy to evaluate")
    names = list(policies)
    if baseline is None:
        baseline = next((n for n in names if n.startswith("rule")), names[0])
    if baseline not in policies:
        raise ValueError(f"baseline {baseline!r} is not one of the policies {names}")
    if NO_BATTERY in policies:
        raise ValueError(f"{NO_BATTERY!r} names the no-battery reference; rename that policy")
    make = env_fn or make_env
    base_kwargs = dict(env_kwargs or {})
    given = base_kwargs.pop("scenario", None)
    if scenarios is None:
        scenarios = [given]
    elif given is not None and any(sc is not None and sc != given for sc in scenarios):
        raise ValueError(
            f"evaluate_policies: scenarios {list(scenarios)!r} and env_kwargs['scenario'] "
            f"{given!r} differ; give one of them"
        )
    scenarios = [given if sc is None else sc for sc in scenarios]
    runs: list[tuple[str, PolicyFactory]] = list(policies.items())
    if no_battery:
        runs.append((NO_BATTERY, _idle))
    jobs = [(name, f, sc, seed) for name, f in runs for sc in scenarios for seed in seeds]
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    first_trace: dict[str, EpisodeTrace] = {}
    for name, factory, scenario, seed in tqdm(jobs, desc="evaluate", disable=not progress):
        kwargs = dict(base_kwargs)
        if scenario is not None:
            kwargs["scenario"] = scenario
        env = make(env_id, shield=shield, shield_kwargs=shield_kwargs, **kwargs)
        try:
            policy = factory(env)
            if shield and uniform_shield:
                policy = behind_shield(policy)
            trace = rollout(env, policy, seed=int(seed), max_steps=max_steps)
            label = _scenario_label(scenario, env)
        finally:
            env.close()  # type: ignore[no-untyped-call]  # gymnasium leaves Env.close unannotated
        kpis = dict(trace.kpis)
        if name == NO_BATTERY:  # no storage: nothing ages, the site pays energy + unserved
            kpis["total_cost"] -= kpis["degradation_cost"]
            kpis["return"] += kpis["degradation_cost"]
            kpis["degradation_cost"] = kpis["soh_loss_pct"] = 0.0
        else:
            first_trace.setdefault(name, trace)
        rows.append({"policy": name, "scenario": label, "seed": int(seed), **kpis})
    table = KPITable(rows=rows, baseline=baseline)
    if plot_dir is not None:
        for name, trace in first_trace.items():
            plot_episode(trace, Path(plot_dir) / f"trace_{name.replace('/', '_')}.png", title=name)
        plot_kpis(table, Path(plot_dir) / "kpis.png")
    return table


def _idle(env: gym.Env[Any, Any]) -> Policy:
    from pulsebms.agents.policy import ConstantPolicy

    shape = env.action_space.shape or (0,)
    return ConstantPolicy(np.zeros(shape[0], dtype=np.float32))


def _scenario_label(scenario: Any, env: gym.Env[Any, Any]) -> str:
    if isinstance(scenario, str):
        return scenario
    if isinstance(scenario, Mapping):
        return str(scenario.get("name") or scenario.get("base") or scenario)
    name = getattr(getattr(env.unwrapped, "scenario", None), "name", None)
    return str(name) if name is not None else str(scenario)


class _PlanFirstStep:
    """An MPC acting on its plan's first step, not projecting it itself (see behind_shield)."""

    def __init__(self, mpc: Any) -> None:
        self.mpc = mpc
        self.name = str(getattr(mpc, "name", "mpc"))

    def reset(self) -> None:
        """Reset the wrapped MPC."""
        reset_policy(self.mpc)

    def act(self, observation: Any) -> Any:
        """The first planned step, clipped to the action space."""
        plan = np.asarray(self.mpc.plan(observation), dtype=np.float64)
        return np.clip(plan[:, 0], -1.0, 1.0).astype(np.float32)


def behind_shield(policy: Policy) -> Policy:
    """The policy as the shield wrapper should see it: its own request, not pre-projected.

    An :class:`pulsebms.agents.mpc.MPCPolicy` with a shield projects its first step itself,
    which hides every intervention (and pre-shield violation) from the wrapper's count.
    Evaluated through this it acts on its plan's first step (still bounded by the shield's
    admissible set in the plan) and the wrapper projects, as for any other policy. Other
    policies come back unchanged.

    Args:
        policy: Any policy.

    Returns:
        The policy to roll out.
    """
    import sys

    mpc = sys.modules.get("pulsebms.agents.mpc")  # no MPC policy exists unless imported
    if mpc is not None and isinstance(policy, mpc.MPCPolicy) and policy.shield is not None:
        return _PlanFirstStep(policy)
    return policy


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_episode(trace: EpisodeTrace, path: str | Path, *, title: str = "") -> Path:
    """Plot SoC, SoH, temperature and allocation per pack over time into one PNG.

    Args:
        trace: The episode.
        path: Output file.
        title: Figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
    hours = np.arange(1, trace.soc.shape[0] + 1) * trace.dt_s / 3600.0
    n = trace.soc.shape[1] if trace.soc.ndim == 2 else 0
    names = trace.pack_names if len(trace.pack_names) == n else [f"pack {i}" for i in range(n)]
    panels = (
        (trace.soc, "SoC [-]"),
        (trace.soh, "SoH [-]"),
        (trace.temperature_c, "temperature [°C]"),
        (trace.power_w / 1000.0, "pack power [kW] (+ dis.)"),
        (trace.action, "requested action [P/P_rated]"),
    )
    for ax, (data, label) in zip(axes, panels, strict=True):
        if data.ndim == 2:
            for i in range(data.shape[1]):
                ax.plot(hours, data[:, i], label=names[i], lw=1.0)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[3].plot(hours, trace.demand_w / 1000.0, "k--", lw=0.8, label="site net load")
    axes[3].legend(loc="upper right", fontsize=7, ncol=4)
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("time [h]")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_kpis(table: KPITable, path: str | Path) -> Path:
    """Bar chart of the baseline-normalised KPIs, one group per KPI, one bar per policy.

    Args:
        table: The KPI table.
        path: Output file.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kpis = [
        "total_cost",
        "energy_cost",
        "degradation_cost",
        "soh_loss_pct",
        "unserved_energy_kwh",
        "violations",
        "soc_spread",
    ]
    policies = table.policies
    x = np.arange(len(kpis))
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for j, policy in enumerate(policies):
        values = [table.normalised(policy, k) for k in kpis]
        ax.bar(x + j * width, np.nan_to_num(values), width, label=policy)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(x + 0.4 - width / 2, kpis, rotation=20)
    ax.set_ylabel(f"KPI / {table.baseline}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
