"""``check_fleet_env``: Gymnasium's API checks plus PulseBMS's physical checks, as a library.

Users run it in their own CI on their own fleets and scenarios::

    from pulsebms.envs import FleetEnv, check_fleet_env
    check_fleet_env(FleetEnv(fleet=[...], scenario="bdew_pv", fidelity="ecm"))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["FleetEnvCheckError", "check_fleet_env", "infos_equal"]

_TEMPERATURE_RANGE_C = (-60.0, 120.0)
_REQUIRED_INFO = (
    "energy_cost_eur",
    "degradation_cost_eur",
    "unserved_penalty_eur",
    "cost",
    "violations",
    "fault",
    "fault_reason",
)


class FleetEnvCheckError(AssertionError):
    """A FleetEnv failed a check; the message says which and why."""


def infos_equal(a: Any, b: Any) -> bool:
    """Exact, recursive equality of two step results (arrays, dicts, tuples, floats, NaN=NaN).

    Args:
        a: First value.
        b: Second value.

    Returns:
        Whether they are identical (same types of container, same values bit for bit).
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(infos_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return (
            a_arr.shape == b_arr.shape
            and a_arr.dtype == b_arr.dtype
            and bool(np.array_equal(a_arr, b_arr, equal_nan=a_arr.dtype.kind == "f"))
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(infos_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _fail(message: str) -> FleetEnvCheckError:
    return FleetEnvCheckError(f"check_fleet_env: {message}")


def _run_gymnasium_checker(env: gym.Env[Any, Any]) -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Render modes are checked below on this env; check_env re-makes the env from its
        # spec for them, which a user's unregistered env does not have.
        try:
            check_env(env, skip_render_check=True, skip_close_check=env.spec is None)
        except FleetEnvCheckError:
            raise
        except (AssertionError, TypeError, ValueError, AttributeError) as exc:
            raise _fail(f"gymnasium's check_env failed: {exc}") from exc
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if messages:
        raise _fail("gymnasium's check_env warned:\n  " + "\n  ".join(messages))


def _rollout(
    env: gym.Env[Any, Any], seed: int, n_steps: int, actions: np.ndarray, base: Any = None
) -> list[tuple[Any, ...]]:
    """Seeded rollout; with ``base`` given, check the env after reset and every step."""
    obs, info = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs, info)]
    if base is not None:
        if not base.observation_space.contains(obs):
            raise _fail("the reset observation is outside the observation space")
        if base.render_mode == "ansi" and not isinstance(base.render(), str):
            raise _fail("render_mode 'ansi' must make render() return a str")
        _check_physics(base, 0)
        _check_observation_units(base, obs, 0)
    for t in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(actions[t])
        out.append((obs, reward, terminated, truncated, info))
        if base is not None:
            if not base.observation_space.contains(obs):
                raise _fail(f"observation outside the observation space after step {t + 1}")
            if not math.isfinite(float(reward)):
                raise _fail(f"reward is not finite after step {t + 1}: {reward}")
            _check_info(info, float(reward), t + 1)
            _check_physics(base, t + 1)
            _check_observation_units(base, obs, t + 1)
        if terminated or truncated:
            break
    return out


def _check_layout(base: Any) -> None:
    layout = getattr(base, "observation_layout", None)
    if layout is None:
        raise _fail("the env has no `observation_layout`")
    space = base.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise _fail(f"observation space must be a flat Box, got {space}")
    if layout.size != space.shape[0]:
        raise _fail(f"observation layout covers {layout.size} elements, space has {space.shape[0]}")
    stop = 0
    for field in layout.fields:
        if field.start != stop or field.stop < field.start:
            raise _fail(f"observation layout has a gap or overlap at field {field.name!r}")
        stop = field.stop
        if not (field.scale > 0 and math.isfinite(field.scale)):
            raise _fail(f"observation field {field.name!r} has a bad scale {field.scale}")
        if not field.unit:
            raise _fail(f"observation field {field.name!r} has no unit")
        low = space.low[field.start : field.stop]
        high = space.high[field.start : field.stop]
        if not (np.all(low == np.float32(field.low)) and np.all(high == np.float32(field.high))):
            raise _fail(f"observation field {field.name!r}: bounds differ from the space's")
    names = getattr(base, "observation_names", None)
    if names is None or len(names) != space.shape[0] or len(set(names)) != len(names):
        raise _fail("`observation_names` must name every observation element once")
    n = base.ratings.n_packs
    action = base.action_space
    if not isinstance(action, gym.spaces.Box) or action.shape != (n,):
        raise _fail(f"action space must be a Box of shape ({n},), got {action}")
    if not (np.all(action.low == -1.0) and np.all(action.high == 1.0)):
        raise _fail("action space must be [-1, 1] per pack (set-point / rated power)")
    for name in ("dt_s", "pack_limits", "ratings"):
        if not hasattr(base, name):
            raise _fail(f"the env lacks `{name}` (the shield wrapper reads it)")
    if len(base.pack_limits) != n:
        raise _fail(
            f"`pack_limits` must hold one entry per pack ({n}), got {len(base.pack_limits)}"
        )


def _check_physics(base: Any, step: int) -> None:
    state = base.fleet_state()
    soc = np.asarray(state.soc)
    where = f"after step {step}"
    if not np.all(np.isfinite(soc)) or np.any((soc < 0.0) | (soc > 1.0)):
        raise _fail(f"SoC outside [0, 1] {where}: {soc.tolist()}")
    soh = np.asarray(state.soh)
    if not np.all(np.isfinite(soh)) or np.any((soh <= 0.0) | (soh > 1.0 + 1e-9)):
        raise _fail(f"SoH outside (0, 1] {where}: {soh.tolist()}")
    temp = np.asarray(state.temperature_c)
    lo_t, hi_t = _TEMPERATURE_RANGE_C
    if not np.all(np.isfinite(temp)) or np.any((temp < lo_t) | (temp > hi_t)):
        raise _fail(f"temperature outside the plausible {lo_t}…{hi_t} °C {where}: {temp.tolist()}")
    volt = np.asarray(state.cell_voltage_v)
    valid = np.asarray(state.valid, dtype=bool)
    for i, lim in enumerate(base.pack_limits):
        # The twin cuts off at the parameter set's window; allow 0.3 V of overpotential.
        lo_v, hi_v = lim.cell_voltage_min_v - 0.3, lim.cell_voltage_max_v + 0.3
        if valid[i] and not (math.isfinite(volt[i]) and lo_v <= volt[i] <= hi_v):
            chem = base.ratings.chemistry[i]
            raise _fail(
                f"pack {i} ({chem}) cell voltage {volt[i]:.4f} V outside its chemistry window "
                f"{lim.cell_voltage_min_v}…{lim.cell_voltage_max_v} V (±0.3 V) {where}"
            )


def _check_observation_units(base: Any, obs: np.ndarray, step: int) -> None:
    state = base.fleet_state()
    layout = base.observation_layout
    phys = layout.unpack(obs)
    checks = {
        "soc": (state.soc, 1e-6),
        "soh": (state.soh, 1e-6),
        "temperature_c": (state.temperature_c, 1e-4 * 50.0 + 1e-3),
        "cell_voltage_v": (state.cell_voltage_v, 1e-4 * 4.0 + 1e-3),
    }
    for name, (expected, tol) in checks.items():
        if name not in phys:
            raise _fail(f"observation layout lacks the per-pack field {name!r}")
        lo = layout.field(name).low * layout.field(name).scale
        hi = layout.field(name).high * layout.field(name).scale
        want = np.clip(np.asarray(expected, dtype=np.float64), lo, hi)
        if not np.allclose(phys[name], want, atol=tol, rtol=1e-5):
            raise _fail(
                f"observation field {name!r} × scale differs from fleet_state() after step {step}: "
                f"{phys[name].tolist()} vs {want.tolist()}"
            )


def _check_info(info: Mapping[str, Any], reward: float, step: int) -> None:
    missing = [k for k in _REQUIRED_INFO if k not in info]
    if missing:
        raise _fail(f"info lacks {missing} after step {step}")
    terms = ("energy_cost_eur", "degradation_cost_eur", "unserved_penalty_eur")
    total = sum(float(info[k]) for k in terms) + float(info.get("fault_penalty_eur", 0.0))
    if not math.isclose(-total, float(reward), rel_tol=1e-9, abs_tol=1e-12):
        raise _fail(
            f"reward {reward} is not −(sum of the cost terms in info) = {-total} at step {step}"
        )
    cost = float(info["cost"])
    if not (math.isfinite(cost) and cost >= 0.0):
        raise _fail(f"info['cost'] must be finite and ≥ 0, got {cost} at step {step}")
    if float(info["degradation_cost_eur"]) < 0.0 or float(info["unserved_penalty_eur"]) < 0.0:
        raise _fail(f"degradation cost and unserved penalty must be ≥ 0 at step {step}")
    for v in info["violations"]:
        for attr in ("pack", "limit", "value", "bound"):
            if not hasattr(v, attr):
                raise _fail(f"a violation lacks `{attr}`: {v!r}")


def check_fleet_env(
    env: gym.Env[Any, Any],
    *,
    n_steps: int = 20,
    seed: int = 0,
    check_gymnasium: bool = True,
    check_determinism: bool = True,
    actions: Sequence[Any] | np.ndarray | None = None,
) -> None:
    """Check a FleetEnv: Gymnasium's API, its layout and units, physical ranges, determinism.

    In order: gymnasium's ``check_env`` (its warnings are failures here); the observation
    layout covers the space without gaps, with units, scales and bounds, and
    ``observation_names``; the shield-facing attributes (``ratings``, ``dt_s``,
    ``pack_limits``, ``fleet_state()``); then a seeded rollout of ``n_steps`` random
    actions checking after every step that SoC is in [0, 1], SoH in (0, 1], temperatures
    plausible (−60…120 °C), each healthy pack's cell voltage inside its chemistry window
    (±0.3 V), the observation × scale equals the fleet state, ``info`` has the cost terms
    and the reward is −(their sum); finally a second rollout from the same seed must be
    identical bit for bit (observations, rewards, terminated, truncated, info).

    Args:
        env: The env (wrappers allowed; the checks use ``env.unwrapped`` where they read
            env attributes).
        n_steps: Steps per rollout.
        seed: Seed of the rollouts (the actions come from a generator seeded with it too).
        check_gymnasium: Run gymnasium's ``check_env`` on the unwrapped env.
        check_determinism: Run the second rollout and compare.
        actions: Optional actions to roll out instead of random ones.

    Raises:
        FleetEnvCheckError: On the first failed check, with what and where.

    Example:
        >>> from pulsebms.envs import FleetEnv, check_fleet_env
        >>> env = FleetEnv(fleet=[{"chemistry": "LFP"}], fidelity="ecm", horizon_steps=8)
        >>> check_fleet_env(env, n_steps=4)  # doctest: +SKIP
    """
    base: Any = env.unwrapped
    if check_gymnasium:
        _run_gymnasium_checker(base)
    _check_layout(base)
    n = base.ratings.n_packs
    if actions is None:
        rng = np.random.default_rng(seed)
        acts = rng.uniform(-1.0, 1.0, size=(n_steps, n)).astype(np.float32)
    else:
        acts = np.asarray(actions, dtype=np.float32).reshape(-1, n)
        n_steps = acts.shape[0]
    first = _rollout(env, seed, n_steps, acts, base=base)
    if check_determinism:
        second = _rollout(env, seed, n_steps, acts)
        if len(first) != len(second):
            raise _fail("two rollouts from the same seed differ in length")
        for t, (a, b) in enumerate(zip(first, second, strict=True)):
            if not infos_equal(a, b):
                fields: tuple[str, ...] = (
                    "observation",
                    "reward",
                    "terminated",
                    "truncated",
                    "info",
                )
                if len(a) == 2:
                    fields = ("observation", "info")
                diff = [fields[j] for j in range(len(a)) if not infos_equal(a[j], b[j])]
                raise _fail(f"two rollouts from seed {seed} differ at step {t} in {diff}")
