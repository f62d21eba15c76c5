"""Safety core (numpy only): limits, the constraint shield and violation accounting."""
