"""The digital-twin service: state sync, calibration and degradation forecasts per pack.

* :mod:`~pulsebms.services.twin.window`: a pack's telemetry window (from the store);
* :mod:`~pulsebms.services.twin.solver`: batched Levenberg–Marquardt (one problem per pack,
  solved in lock-step) with Gauss–Newton uncertainties;
* :mod:`~pulsebms.services.twin.calibration`: capacity (SoH) and resistance of every pack
  on the twin's equivalent circuit;
* :mod:`~pulsebms.services.twin.electrode`: active-material fractions on PyBaMM's SPM
  (the physics fidelity);
* :mod:`~pulsebms.services.twin.duty`: duty cycles (forecast assumptions, recorded truth);
* :mod:`~pulsebms.services.twin.forecast`: SoH trajectory and remaining useful life under a
  duty, from the semi-empirical fade;
* :mod:`~pulsebms.services.twin.sync`: the fleet twin kept in step with measurements, its
  voltage prediction error tracked;
* :mod:`~pulsebms.services.twin.recording`: recorded telemetry of a truth twin (tests,
  notebook, back-test);
* :mod:`~pulsebms.services.twin.service`: the service loop (MQTT telemetry in, store,
  schedules, forecasts out) and the ``pulsebms-twin-service`` CLI
  (:mod:`~pulsebms.services.twin.cli`).
"""

from pulsebms.services.twin.calibration import EcmCalibration, EcmCalibrator
from pulsebms.services.twin.duty import DEFAULT_DUTY, Duty
from pulsebms.services.twin.electrode import ElectrodeCalibration, ElectrodeCalibrator
from pulsebms.services.twin.forecast import SohForecast, forecast_soh
from pulsebms.services.twin.service import PackState, TwinService, TwinServiceConfig
from pulsebms.services.twin.sync import FleetMirror
from pulsebms.services.twin.window import PackWindow

__all__ = [
    "DEFAULT_DUTY",
    "Duty",
    "EcmCalibration",
    "EcmCalibrator",
    "ElectrodeCalibration",
    "ElectrodeCalibrator",
    "FleetMirror",
    "PackState",
    "PackWindow",
    "SohForecast",
    "TwinService",
    "TwinServiceConfig",
    "forecast_soh",
]
