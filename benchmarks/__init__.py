"""pulsebms.benchmarks."""
