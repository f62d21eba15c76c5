"""pulsebms.agents."""
