"""pulsebms.export."""
