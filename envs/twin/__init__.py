"""Batched fleet simulators (PyBaMM physics and equivalent-circuit fidelities)."""
