"""Sensor drivers: each reads one device and emits samples (see base.py)."""
