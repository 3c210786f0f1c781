"""Sinks: adapters that take what the core produced and hand it to the outside world.

Each sink lives in its own module or package and is imported from there (`hullwatch.sinks.mqtt`,
`hullwatch.sinks.influx`), so a sink's third-party library is only needed by whoever uses that
sink.
"""
