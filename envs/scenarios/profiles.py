"""Real annual profiles from libraries that ship their data (no network), cached per process.

* Site load: the BDEW 2025 standard load profiles from ``demandlib`` (15-minute values over
  one year, scaled by demandlib to an annual energy of 1 GWh; we return them per unit of
  their annual peak).
* Weather: a TMY3 typical meteorological year bundled with ``pvlib`` (hourly dry-bulb
  temperature and irradiance).
* PV: ``pvlib`` turns the TMY3 irradiance into the AC power of a fixed-tilt array: solar
  position, plane-of-array irradiance (isotropic sky), Faiman cell temperature, PVWatts DC
  (−0.4 %/K) and the PVWatts inverter, per unit of the DC nameplate.

Each table is built once per process (``functools.lru_cache``) so that an env reset only
interpolates arrays. pandas, demandlib and pvlib are imported inside the loaders, so
``import pulsebms.envs`` stays light.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsebms.core.types import FloatArray

__all__ = ["AnnualProfile", "bdew_load_profile", "tmy3_ambient_profile", "tmy3_pv_profile"]


_REFERENCE_YEAR = 2023  # a non-leap year starting on a Sunday; only weekdays depend on it


@dataclass(frozen=True)
class AnnualProfile:
    """One year of a signal at a fixed step (read-only array).

    Attributes:
        values: Sample ``i`` is the mean over ``[i·step_s, (i+1)·step_s)`` from local
            midnight on 1 January.
        step_s: Sample spacing [s].
        unit: Unit of ``values`` (``"p.u."``, ``"degC"``).
        source: Where the data come from (for logs and reports).
        native_scale: ``values × native_scale`` is the source's own unit (kW for the BDEW
            profiles, which demandlib scales to 1 GWh per year; 1.0 elsewhere).
    """

    values: FloatArray
    step_s: float
    unit: str
    source: str
    native_scale: float = 1.0

    def sample(self, time_s: FloatArray) -> FloatArray:
        """Linear interpolation between sample centres at times ``time_s`` [s since 1 Jan].

        The year wraps around, so an episode may cross New Year.
        """
        centres = (np.arange(self.values.shape[0]) + 0.5) * self.step_s
        period = self.values.shape[0] * self.step_s
        return np.interp(time_s, centres, self.values, period=period)


@functools.lru_cache(maxsize=8)
def bdew_load_profile(profile: str = "H25") -> AnnualProfile:
    """BDEW 2025 standard load profile from demandlib, per unit of its annual peak.

    Args:
        profile: ``"H25"``, ``"G25"``, ``"L25"``, ``"P25"`` or ``"S25"``.

    Returns:
        15-minute values over the reference year, max 1.0. Multiply by the peak [W].

    Raises:
        ValueError: If the profile name is unknown.
    """
    import pandas as pd  # lazy: heavy
    from demandlib import bdew  # lazy: heavy

    classes = {name: getattr(bdew, name) for name in ("H25", "G25", "L25", "P25", "S25")}
    if profile not in classes:
        raise ValueError(f"unknown BDEW profile {profile!r}; known: {sorted(classes)}")
    index = pd.date_range(f"{_REFERENCE_YEAR}-01-01", periods=365 * 96, freq="15min")
    with warnings.catch_warnings():
        # demandlib 0.2.2 uses pandas' deprecated ``inplace=`` (Pandas4Warning, FutureWarning).
        warnings.simplefilter("ignore")
        series = classes[profile](index)
    values = np.asarray(series.to_numpy(), dtype=np.float64)
    peak_kw = float(values.max())
    values = values / peak_kw
    values.setflags(write=False)
    source = f"demandlib BDEW {profile} ({_REFERENCE_YEAR})"
    return AnnualProfile(values, 900.0, "p.u.", source, native_scale=peak_kw)


def _tmy3_path(filename: str) -> str:
    import pvlib  # lazy: heavy

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TMY3 file {filename!r} is not bundled with this pvlib ({path})")
    return path


@functools.lru_cache(maxsize=4)
def _tmy3(filename: str) -> tuple[Any, dict[str, float]]:
    import pvlib  # lazy: heavy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, meta = pvlib.iotools.read_tmy3(_tmy3_path(filename), map_variables=True)
    return data, dict(meta)


@functools.lru_cache(maxsize=4)
def tmy3_ambient_profile(filename: str = "723170TYA.CSV") -> AnnualProfile:
    """Hourly dry-bulb temperature of a TMY3 year bundled with pvlib.

    TMY3 rows are hour-ending in local standard time: row ``i`` is the hour
    ``[i, i+1)`` h after midnight on 1 January.

    Args:
        filename: One of :data:`pulsebms.envs.scenarios.TMY3_FILES`.

    Returns:
        8760 hourly values [°C].
    """
    data, _ = _tmy3(filename)
    values = np.asarray(data["temp_air"].to_numpy(), dtype=np.float64)
    values.setflags(write=False)
    return AnnualProfile(values, 3600.0, "degC", f"pvlib TMY3 {filename} dry-bulb")


@functools.lru_cache(maxsize=8)
def tmy3_pv_profile(
    filename: str = "723170TYA.CSV", tilt_deg: float = 30.0, azimuth_deg: float = 180.0
) -> AnnualProfile:
    """Hourly AC power of a fixed-tilt PV array, per unit of its DC nameplate, from pvlib.

    Args:
        filename: One of :data:`pulsebms.envs.scenarios.TMY3_FILES`.
        tilt_deg: Array tilt from horizontal [deg].
        azimuth_deg: Array azimuth [deg], 180 = south.

    Returns:
        8760 hourly values in p.u. of DC nameplate (zero at night, ≈0.9 at best).
    """
    import pandas as pd  # lazy: heavy
    import pvlib  # lazy: heavy

    data, meta = _tmy3(filename)
    frame: pd.DataFrame = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Hour-ending labels: evaluate the sun at the middle of each hour.
        times = frame.index - pd.Timedelta(minutes=30)
        solpos = pvlib.solarposition.get_solarposition(
            times,
            meta["latitude"],
            meta["longitude"],
            altitude=meta["altitude"],
            temperature=frame["temp_air"].to_numpy(),
        )
        poa = pvlib.irradiance.get_total_irradiance(
            surface_tilt=tilt_deg,
            surface_azimuth=azimuth_deg,
            solar_zenith=solpos["apparent_zenith"].to_numpy(),
            solar_azimuth=solpos["azimuth"].to_numpy(),
            dni=frame["dni"].to_numpy(),
            ghi=frame["ghi"].to_numpy(),
            dhi=frame["dhi"].to_numpy(),
        )
        poa_global = np.nan_to_num(np.asarray(poa["poa_global"], dtype=np.float64))
        cell_c = pvlib.temperature.faiman(
            poa_global, frame["temp_air"].to_numpy(), frame["wind_speed"].to_numpy()
        )
        # pdc0 = 1000 W at 1000 W/m² so the result divided by 1000 is per unit of nameplate.
        pdc = pvlib.pvsystem.pvwatts_dc(poa_global, cell_c, pdc0=1000.0, gamma_pdc=-0.004)
        pac = pvlib.inverter.pvwatts(pdc, pdc0=1000.0 / 0.96)
    values = np.clip(np.nan_to_num(np.asarray(pac, dtype=np.float64)) / 1000.0, 0.0, None)
    values.setflags(write=False)
    return AnnualProfile(
        values, 3600.0, "p.u.", f"pvlib PVWatts on TMY3 {filename}, tilt {tilt_deg}°"
    )
