"""The numpy-only contracts every other part of PulseBMS builds on.

:mod:`pulsebms.core` imports numpy and nothing else (not even :mod:`pulsebms.safety` at
run time), so the simulation stack, the exporter and the edge runtime can all depend on it:

* :mod:`pulsebms.core.types`: array aliases and the ``FleetEnvLike`` protocol (what the
  shield, the agents and the exporter read from an environment);
* :mod:`pulsebms.core.observation`: the named observation layout and the one
  ``build_observation`` used by the environment, the exporter and the edge runtime;
* :mod:`pulsebms.core.messaging`: the MQTT topics and versioned JSON payloads of the
  site/cloud loop (standard library only);
* :mod:`pulsebms.core.console_scripts`: the console-script entry points (standard library
  only), which name the extra to install when a command's dependencies are missing.
"""
