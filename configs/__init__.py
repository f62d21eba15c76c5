"""pulsebms.configs."""
