"""The observation contract: layout round trip, build_observation, env ≡ edge builder."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pulsebms.envs  # noqa: F401  (registers the ids)
from pulsebms.core.observation import (
    PACK_SOURCES,
    SITE_SOURCES,
    ObservationInputs,
    ObservationLayout,
    ObsField,
    build_observation,
    fleet_observation_layout,
)
from pulsebms.edge_runtime.manifest import (
    Manifest,
    ModelInfo,
    SourceInfo,
    load_manifest,
    ratings_to_dict,
)
from pulsebms.edge_runtime.observation import ObservationBuilder
from pulsebms.edge_runtime.telemetry import SiteSnapshot
from pulsebms.envs import FleetEnv
from pulsebms.export.fleet import action_fields, fleet_spec_from_env

PACKS = ("lfp-0", "nmc-1", "lco-2")
RATED_W = 3000.0


def _inputs(**overrides: object) -> ObservationInputs:
    base: dict[str, object] = {
        "soc": np.array([0.2, 0.5, 0.9]),
        "soh": np.array([0.97, 0.95, 0.96]),
        "temperature_c": np.array([20.0, 30.0, 45.0]),
        "cell_voltage_v": np.array([3.3, 3.9, 4.05]),
        "current_a": np.array([10.0, -5.0, 0.0]),
        "capacity_ah": np.array([18.4, 20.0, 13.6]),
        "demand_w": 1200.0,
        "price_per_kwh": 0.31,
        "ambient_c": 18.0,
        "hour_of_day": 7.25,
        "demand_forecast_w": np.array([1100.0, 900.0]),
        "price_forecast_per_kwh": np.array([0.3, 0.28]),
    }
    base.update(overrides)
    return ObservationInputs(**base)  # type: ignore[arg-type]  # test data of mixed types


def test_field_defaults_and_round_trip() -> None:
    f = ObsField("soc[1]", 0, 1, pack=1)
    assert f.source == "soc"
    assert f.per_pack
    assert f.width == 1
    assert (f.low, f.high) == (-math.inf, math.inf)
    assert ObsField.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    layout = fleet_observation_layout(PACKS, 2, RATED_W)
    data = json.loads(json.dumps(layout.to_dict()))
    again = ObservationLayout.from_dict(data)
    assert again == layout
    assert again.names == layout.names
    assert ObservationLayout.from_dict(data["fields"]).fields == layout.fields
    with pytest.raises(ValueError, match="unknown key"):
        ObsField.from_dict({"name": "soc", "start": 0, "stop": 1, "colour": "red"})
    with pytest.raises(ValueError, match="size"):
        ObservationLayout.from_dict({**data, "size": 99})


def test_old_manifest_field_form_reads() -> None:
    old = {"name": "soc", "start": 0, "stop": 3, "source": "soc", "unit": "fraction",
           "scale": 1.0, "low": 0.0, "high": None, "pack": None}  # fmt: skip
    f = ObsField.from_dict(old)
    assert f.description == ""
    assert f.high == math.inf
    assert f.source == "soc"


def test_layout_accessors() -> None:
    layout = fleet_observation_layout(PACKS, 2, RATED_W)
    n = len(PACKS)
    assert layout.size == 5 * n + 1 + 2 + 1 + 2 + 1 + 2
    assert layout.slices["demand_w"] == slice(5 * n, 5 * n + 1)
    assert layout.field("demand_w").scale == RATED_W
    assert layout.names[:3] == ("soc[lfp-0]", "soc[nmc-1]", "soc[lco-2]")
    assert "demand_forecast_w[+2]" in layout.names
    assert "ambient_c" in layout.names
    low, high = layout.low, layout.high
    assert low.shape == high.shape == (layout.size,)
    assert low[layout.slices["temperature_c"]].tolist() == [-2.0] * n
    low[:] = 7.0  # a copy: the layout is unchanged
    assert layout.low[0] == 0.0
    assert all(f.source in PACK_SOURCES or f.source in SITE_SOURCES for f in layout.fields)
    with pytest.raises(KeyError, match="no observation field"):
        layout.field("wind")
    obs = build_observation(layout, _inputs())
    phys = layout.unpack(obs)
    np.testing.assert_allclose(phys["temperature_c"], [20.0, 30.0, 45.0], rtol=1e-6)


def test_build_matches_hand_computation() -> None:
    layout = fleet_observation_layout(PACKS, 2, RATED_W)
    inp = _inputs()
    angle = 2.0 * np.pi * 7.25 / 24.0
    expected = np.concatenate(
        [
            inp.soc,
            inp.soh,
            inp.temperature_c / 50.0,
            inp.cell_voltage_v / 4.0,
            inp.current_a / inp.capacity_ah,
            [1200.0 / RATED_W],
            np.array([1100.0, 900.0]) / RATED_W,
            [0.31],
            [0.3, 0.28],
            [18.0 / 50.0],
            [np.sin(angle), np.cos(angle)],
        ]
    ).astype(np.float32)
    obs = build_observation(layout, inp)
    assert obs.dtype == np.float32
    assert obs.tobytes() == expected.tobytes()


def test_nan_and_out_of_range() -> None:
    layout = fleet_observation_layout(PACKS, 2, RATED_W)
    inp = _inputs(
        soc=np.array([np.nan, 1.5, -0.1]),
        temperature_c=np.array([np.inf, -np.inf, 500.0]),
        demand_w=math.nan,
        demand_forecast_w=None,  # persistence (of NaN → 0)
        price_forecast_per_kwh=None,
    )
    obs = build_observation(layout, inp)
    assert obs[layout.slices["soc"]].tolist() == [0.0, 1.0, 0.0]
    assert obs[layout.slices["temperature_c"]].tolist() == [2.0, -2.0, 2.0]
    assert obs[layout.slices["demand_w"]].tolist() == [0.0]
    assert obs[layout.slices["demand_forecast_w"]].tolist() == [0.0, 0.0]
    price = obs[layout.slices["price_forecast_per_kwh"]]
    np.testing.assert_array_equal(price, np.float32([0.31, 0.31]))
    open_bounds = ObservationLayout((ObsField("current_a", 0, 3),))
    values = build_observation(open_bounds, _inputs(current_a=np.array([np.inf, np.nan, 1.0])))
    assert values.tolist() == [math.inf, 0.0, 1.0]


def test_bad_inputs_raise() -> None:
    layout = fleet_observation_layout(PACKS, 3, RATED_W)
    with pytest.raises(ValueError, match="steps"):
        build_observation(layout, _inputs())  # the forecasts have 2 steps, the layout 3
    with pytest.raises(ValueError, match="not a site source"):
        build_observation(ObservationLayout((ObsField("wind_w", 0, 1),)), _inputs())


@settings(max_examples=50, deadline=None)
@given(
    soc=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    hour=st.floats(0.0, 24.0, exclude_max=True),
    demand=st.floats(-1e6, 1e6),
)
def test_always_inside_the_bounds(soc: list[float], hour: float, demand: float) -> None:
    layout = fleet_observation_layout(PACKS, 2, RATED_W)
    obs = build_observation(layout, _inputs(soc=np.array(soc), hour_of_day=hour, demand_w=demand))
    assert np.all(np.isfinite(obs))
    assert np.all(obs >= layout.low.astype(np.float32))
    assert np.all(obs <= layout.high.astype(np.float32))


def _reference_build(layout: ObservationLayout, inputs: ObservationInputs) -> np.ndarray:
    """The definition, field by field: read, divide by the scale, NaN → 0, clip."""
    out = np.zeros(layout.size, dtype=np.float64)
    for f in layout.fields:
        if f.per_pack:
            per_pack = inputs.pack_quantity(f.source)
            value = per_pack if f.pack is None else per_pack[f.pack : f.pack + 1]
        else:
            value = inputs.site_quantity(f.source, f.width)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f.start : f.stop] = value / f.scale
    out = np.nan_to_num(out, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return np.clip(out, layout.low, layout.high).astype(np.float32)


_ODD = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -5e-324, 0.5, 3.7])
_ANY = st.one_of(_ODD, st.floats(-1e3, 1e3))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.lists(_ANY, min_size=3, max_size=3), min_size=6, max_size=6),
    site=st.lists(_ANY, min_size=3, max_size=3),
    per_field=st.booleans(),
)
def test_build_is_the_field_by_field_definition_bit_for_bit(
    values: list[list[float]], site: list[float], per_field: bool
) -> None:
    """Regression guard for speed-ups of build_observation: the same bytes, -0.0 included."""
    if per_field:  # one field per pack and quantity, some sources read twice
        fields, start = [], 0
        for source in ("soc", "current_c_rate", "last_action", "soc"):
            for pack in range(len(PACKS)):
                fields.append(ObsField(f"{source}{pack}", start, start + 1, scale=0.7,
                                       low=-1.0, high=1.0, source=source, pack=pack))  # fmt: skip
                start += 1
        fields.append(ObsField("time_of_day_sin", start, start + 1))
        layout = ObservationLayout(tuple(fields))
    else:
        layout = fleet_observation_layout(PACKS, 2, RATED_W, site_extras=True)
    soc, soh, temp, volt, cur, last = (np.array(v) for v in values)
    inputs = _inputs(
        soc=soc, soh=soh, temperature_c=temp, cell_voltage_v=volt, current_a=cur,
        last_action=last, demand_w=site[0], price_per_kwh=site[1], ambient_c=site[2],
        grid_import_limit_w=site[0], grid_export_limit_w=site[1], feed_in_price_per_kwh=0.1,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a C-rate: both sides
        assert (
            build_observation(layout, inputs).tobytes()
            == _reference_build(layout, inputs).tobytes()
        )


def _edge_manifest_for(env: object) -> Manifest:
    spec = fleet_spec_from_env(env)
    n = spec.ratings.n_packs
    return Manifest(
        model=ModelInfo("policy.onnx", "0" * 64, "obs", "act", spec.observation_size, n, 18),
        source=SourceInfo("sb3", "PPO", "/nowhere", "1" * 64),
        observation=spec.observation,
        action=action_fields(n),
        ratings=ratings_to_dict(spec.ratings),
        limits=tuple(dataclasses.asdict(lim) for lim in spec.limits),
        shield={"dt_s": spec.dt_s},
        dt_s=spec.dt_s,
        versions={},
        created_utc="2026-01-01T00:00:00+00:00",
    )


def test_env_and_edge_builder_agree(tmp_path: Path) -> None:
    """The contract: from the same state, the env and the edge build the same vector.

    The edge reads a manifest exported from the env and saved to JSON; forecasts are the
    one difference (persistence on the edge), so they are left out of the comparison.
    """
    env = gym.make("PulseBMS/FleetSmall-v0", fidelity="ecm", horizon_steps=12)
    base = env.unwrapped
    assert isinstance(base, FleetEnv)
    manifest = _edge_manifest_for(env)
    assert manifest.observation is base.observation_layout  # the env's layout, as it is
    loaded = load_manifest(manifest.save(tmp_path / "manifest.json"))
    assert loaded.observation == base.observation_layout
    builder = ObservationBuilder(loaded)
    layout = builder.layout
    time_fields = ("time_of_day_sin", "time_of_day_cos")
    exact = np.ones(layout.size, dtype=bool)
    for f in layout.fields:
        if f.source in ("demand_forecast_w", "price_forecast_per_kwh", *time_fields):
            exact[f.slice] = False
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=3)
    last_action = np.zeros(base.n_packs)
    for _ in range(10):
        state = base.fleet_state()
        series = base.series
        k = base.step_index
        site = SiteSnapshot(
            demand_w=float(series.net_load_w[k]),
            price_per_kwh=float(series.price_eur_per_kwh[k]),
            time_of_day_s=float(series.hour_of_day[k]) * 3600.0,
            ambient_c=float(series.ambient_c[k]),
            fresh=True,
            age_s=0.0,
        )
        edge = builder.build(state, site, last_action, time_of_day_s=site.time_of_day_s)
        assert edge.shape == obs.shape
        assert edge.dtype == obs.dtype
        assert edge[exact].tobytes() == obs[exact].tobytes()
        for name in time_fields:  # seconds → hours on the edge: within a float32 ulp
            np.testing.assert_allclose(
                edge[layout.slices[name]], obs[layout.slices[name]], atol=1e-7
            )
        last_action = rng.uniform(-1, 1, base.n_packs)
        obs, *_ = env.step(last_action.astype(np.float32))
    env.close()
