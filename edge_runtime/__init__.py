"""pulsebms.edge_runtime."""
