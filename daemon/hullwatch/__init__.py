"""hullwatch: pressure-integrity monitor for ground mock-ups of spacecraft modules."""

__version__ = "0.1.0"
