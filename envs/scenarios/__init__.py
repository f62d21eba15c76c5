"""Seeded scenario generators: site demand, PV, price and ambient temperature."""
