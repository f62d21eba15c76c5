"""pulsebms.experiments."""
