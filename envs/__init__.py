"""PulseBMS environments: chemistries, packs, the fleet twin, scenarios and FleetEnv."""
