"""The simulated mock-up module: physics and synthetic sensor streams."""
