"""Evaluation harness: any policy, any registered env, scenarios × seeds → one KPI table.

Each policy is built per environment by a factory (rules and the MPC read the env's layout,
ratings and limits; the oracle MPC reads its scenario), rolled out for one episode per
(scenario, seed), and scored by :data:`KPIS`. Every KPI is also reported divided by the
rule-based baseline's value (CityLearn style: < 1 is better than the baseline for costs).

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

__all__ = [
    "KPIS",
    "EpisodeTrace",
    "KPITable",
    "PolicyFactory",
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
    "shield_interventions": "steps where the shield changed the action [count]",
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
        totals["shield_interventions"] += float(_intervened(info))
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

    def mean(self, policy: str, kpi: str) -> float:
        """Mean of ``kpi`` over every episode of ``policy``."""
        values = [float(r[kpi]) for r in self.rows if r["policy"] == policy]
        return float(np.mean(values)) if values else math.nan

    def normalised(self, policy: str, kpi: str) -> float:
        """``mean(policy, kpi) / mean(baseline, kpi)``; NaN when the baseline is 0 or absent.

        Where the baseline's value is 0 and the policy's is 0 too, the ratio is 1.
        """
        base = self.mean(self.baseline, kpi)
        value = self.mean(policy, kpi)
        if math.isnan(base):
            return math.nan
        if base == 0.0:
            return 1.0 if value == 0.0 else math.nan
        return value / abs(base)

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
        lines = [
            "| policy | " + " | ".join(kpis) + " |",
            "| --- | " + " | ".join("---:" for _ in kpis) + " |",
        ]
        for row in self.summary():
            cells = []
            for kpi in kpis:
                cell = f"{row[kpi]:.4g}"
                norm = row.get(f"{kpi}_norm")
                if norm is not None and not math.isnan(norm):
                    cell += f" ({norm:.2f}×)"
                cells.append(cell)
            lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + f"\n\nNormalised by `{self.baseline}` (× baseline).\n"

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
    scenarios: Sequence[Any] = ("default",),
    seeds: Sequence[int] = (0,),
    baseline: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    shield: bool = True,
    shield_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    plot_dir: str | Path | None = None,
    progress: bool = True,
    env_fn: Callable[..., gym.Env[Any, Any]] | None = None,
) -> KPITable:
    """Evaluate every policy on every (scenario, seed) and return one KPI table.

    Args:
        policies: Name → factory building the policy for an env instance.
        env_id: Registered env id.
        scenarios: Scenarios (names or dicts), passed as the env's ``scenario`` argument;
            ``None`` entries keep the env's default.
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

    Returns:
        The KPI table.

    Raises:
        ValueError: If no policy is given or ``baseline`` is not one of them.
    """
    if not policies:
        raise ValueError("evaluate_policies: no policy to evaluate")
    names = list(policies)
    if baseline is None:
        baseline = next((n for n in names if n.startswith("rule")), names[0])
    if baseline not in policies:
        raise ValueError(f"baseline {baseline!r} is not one of the policies {names}")
    make = env_fn or make_env
    jobs = [(name, sc, seed) for name in names for sc in scenarios for seed in seeds]
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    first_trace: dict[str, EpisodeTrace] = {}
    for name, scenario, seed in tqdm(jobs, desc="evaluate", disable=not progress):
        kwargs = dict(env_kwargs or {})
        if scenario is not None:
            kwargs["scenario"] = scenario
        env = make(env_id, shield=shield, shield_kwargs=shield_kwargs, **kwargs)
        try:
            policy = policies[name](env)
            trace = rollout(env, policy, seed=int(seed), max_steps=max_steps)
        finally:
            env.close()  # type: ignore[no-untyped-call]  # gymnasium leaves Env.close unannotated
        first_trace.setdefault(name, trace)
        label = scenario if isinstance(scenario, str) else str(scenario)
        rows.append({"policy": name, "scenario": label, "seed": int(seed), **trace.kpis})
    table = KPITable(rows=rows, baseline=baseline)
    if plot_dir is not None:
        for name, trace in first_trace.items():
            plot_episode(trace, Path(plot_dir) / f"trace_{name.replace('/', '_')}.png", title=name)
        plot_kpis(table, Path(plot_dir) / "kpis.png")
    return table


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
