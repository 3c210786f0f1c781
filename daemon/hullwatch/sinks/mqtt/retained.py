"""The station's retained state on the broker: a snapshot, its re-publication and reconciliation.

Theory of operation
-------------------
The snapshot holds the latest retained payload of every topic the station has published
(hatches, alarms, volume alarm flags, metrics, discovery); an empty payload deletes the entry.
While the sink is disconnected a retained message only updates the snapshot, and a deletion is
remembered as a tombstone, instead of filling paho's queue with stale values. At every
(re)connect the sink publishes the whole snapshot again (tombstones first, as empty payloads),
so a broker that restarted without persistence has the retained state back.

Reconciliation. At every connect the sink also reads back what the broker keeps of this
station's retained state (`P/alarm/#`, `P/volume/+/alarm`, its discovery topics); each message
is compared with the snapshot as it arrives. A topic the snapshot lacks (an alarm of a previous
run, a volume or an entity that no longer exists, discovery while Home Assistant is off) is
removed with an empty retained message; a volume's alarm flag the station describes is rewritten
`OFF` instead (Home Assistant ignores an empty payload and would keep "Problem"); a topic whose
payload differs gets the snapshot's.

One lock guards the snapshot and is held across the `send` that hands a retained message to
paho, so the snapshot and the caller can never reorder two values of one topic. `send` returns
whether paho took the message; it is None while disconnected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Send = Callable[[str, bytes], bool]


class RetainedState:
    """The latest retained payload of each of the station's topics, and deletions not yet sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, bytes] = {}
        self._tombstones: set[str] = set()
        self.resync = False  # a retained message was dropped (paho's queue full): send the snapshot again

    def __len__(self) -> int:
        return len(self._values)

    def get(self, topic: str) -> bytes | None:
        """The snapshot's payload of a topic, or None."""
        with self._lock:
            return self._values.get(topic)

    def set(self, topic: str, payload: bytes, send: Send | None, dedupe: bool = False) -> None:
        """Record a retained value (empty: delete the topic) and send it unless disconnected (`send` None).

        `dedupe`: do nothing if the snapshot already holds this payload.
        """
        with self._lock:
            if not (dedupe and payload and self._values.get(topic) == payload):
                self._set(topic, payload, send)

    def set_default(self, topic: str, payload: bytes, send: Send | None) -> None:
        """Record `payload` for a topic the snapshot does not hold yet."""
        with self._lock:
            if topic not in self._values:
                self._set(topic, payload, send)

    def _set(self, topic: str, payload: bytes, send: Send | None) -> None:
        """`set`, under the lock."""
        if payload:
            self._values[topic] = payload
            self._tombstones.discard(topic)
        else:
            self._values.pop(topic, None)
        sent = send is not None and send(topic, payload)
        if not sent and not payload:
            self._tombstones.add(topic)

    def republish(self, send: Send, only_prefix: str | None = None) -> None:
        """Send the snapshot (tombstones first, as empty payloads); `only_prefix`: just the topics under it."""
        with self._lock:
            if only_prefix is None:
                self.resync = False
                for topic in sorted(self._tombstones):
                    if send(topic, b""):
                        self._tombstones.discard(topic)
            for topic, payload in self._values.items():
                if only_prefix is None or topic.startswith(only_prefix):
                    send(topic, payload)

    def reconcile(self, topic: str, held: bytes, send: Send, default: bytes | None = None) -> bytes | None:
        """Set right a retained message the broker held for one of our topics.

        `default`: what the topic says when the snapshot has nothing for it (a described volume's
        alarm flag: `OFF`), else it is removed. Returns the payload sent (b"" for a removal), or
        None when the broker's copy was right.
        """
        with self._lock:
            current = self._values.get(topic)
            if current is None and default is not None:
                current = self._values[topic] = default
            if current == held:
                return None
            fix = current if current is not None else b""
            if send(topic, fix):
                self._tombstones.discard(topic)
            elif not fix:
                self._tombstones.add(topic)
        return fix
