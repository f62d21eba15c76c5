"""Fleet battery-health analytics: health score, degradation forecast, anomalies, maintenance queue.

Modules, one concept each:

* :mod:`.fleet`: seeded fleet histories from the twin (varied duty, temperature, chemistry,
  accelerated fade), with :mod:`.sensors` (what a BMS reports) and :mod:`.faults` (stuck
  sensor, internal short, abnormal heating injected into the twin loop);
* :mod:`.cycles`: cycle summaries from raw telemetry (the one path for training and service);
* :mod:`.public_format`: the Battery Archive CSV format (loader and writer);
* :mod:`.features`, :mod:`.score`: engineered features → state of health (gradient boosting
  against a linear baseline);
* :mod:`.forecast`, :mod:`.forecast_onnx`: the LSTM SoH forecaster, its baselines and its
  ONNX export with an onnxruntime parity check;
* :mod:`.anomaly`: anomaly detection on telemetry windows;
* :mod:`.priority`: the maintenance queue and its comparison with an oracle;
* :mod:`.service`: the health service (telemetry store in, ``pulsebms/{site}/{device}/health``
  out); :mod:`.metrics` and :mod:`.cli`: ``pulsebms-health metrics``.

Import the submodules directly; this package imports nothing heavy.
"""
