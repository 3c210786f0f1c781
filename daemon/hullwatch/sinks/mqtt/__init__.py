"""The MQTT sink (ICD §5), in parts that each do one thing.

- `sink`: `MqttSink`, the adapter between the service and a broker (paho's thread, queueing,
  the spool's confirmed sends, reconnects, command dispatch);
- `telemetry`: every message the station publishes, built in one place;
- `retained`: the retained snapshot, its re-publication and reconciliation with the broker;
- `commands`: `P/cmd/<verb>` read, validated and answered;
- `discovery`: Home Assistant discovery, as data;
- `connection`: credentials, TLS files and rate-limited logging.
"""

from hullwatch.sinks.mqtt.connection import MqttSetupError, apply_credentials
from hullwatch.sinks.mqtt.discovery import StationDescription
from hullwatch.sinks.mqtt.sink import MqttSink
from hullwatch.sinks.mqtt.telemetry import Telemetry, sample_payload

__all__ = ["MqttSetupError", "MqttSink", "StationDescription", "Telemetry", "apply_credentials", "sample_payload"]
