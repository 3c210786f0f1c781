"""The bridge's MQTT 5 subscriber: its codec, and a real mosquitto's sessions, flow control, TLS and passwords."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hullwatch.mqtt5 import (
    PUBLISH,
    Decoder,
    Message,
    ProtocolError,
    Subscriber,
    encode_pubacks,
    parse_publish,
    varint,
)
from mosquitto_fixture import HAVE_MOSQUITTO, HAVE_OPENSSL, Broker, make_certs


def publish_packet(topic: str, payload: bytes, packet_id: int, properties: bytes = b"") -> bytes:
    """A PUBLISH as a broker sends it to an MQTT 5 client (QoS 1 when packet_id, else QoS 0)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (packet_id.to_bytes(2, "big") if packet_id else b"")
    body += varint(len(properties)) + properties + payload
    return bytes([0x32 if packet_id else 0x30]) + varint(len(body)) + body


def test_the_decoder_splits_a_stream_into_packets_however_it_arrives():
    stream = b"".join(
        [
            publish_packet("a/b", b"x" * 5, 1),
            publish_packet("a/c", b"y" * 200, 2, properties=b"\x01\x01"),  # a two-byte length; a property skipped
            publish_packet("a/d", b"z" * 20_000, 0),  # three bytes of length, QoS 0
            b"\xd0\x00",  # PINGRESP
        ]
    )
    whole = Decoder().feed(stream)
    decoder = Decoder()
    byte_by_byte = [p for i in range(len(stream)) for p in decoder.feed(stream[i : i + 1])]
    assert whole == byte_by_byte
    assert [kind for kind, _, _ in whole] == [PUBLISH, PUBLISH, PUBLISH, 13]
    messages = [parse_publish(flags, body, connection=7) for kind, flags, body in whole if kind == PUBLISH]
    assert messages == [
        Message("a/b", b"x" * 5, 1, 1, 7),
        Message("a/c", b"y" * 200, 2, 1, 7),
        Message("a/d", b"z" * 20_000, 0, 0, 7),
    ]
    with pytest.raises(ProtocolError):
        Decoder().feed(b"\x30\xff\xff\xff\xff\x01")  # a remaining length of five bytes
    assert encode_pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"


class Collector:
    """A Subscriber's messages and connections, waited for."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.sessions: list[bool] = []
        self._lock = threading.Lock()

    def take(self, messages: list[Message]) -> None:
        with self._lock:
            self.messages += messages

    def wait(self, n: int, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.messages) >= n:
                    return True
            time.sleep(0.02)
        return False


def subscriber(broker: Broker, collector: Collector, client_id: str = "bridge-t", **kw) -> Subscriber:
    sub = Subscriber(client_id, ["fleet/#"], 1, collector.take, session_expiry_s=600, **kw)
    sub.on_connect = collector.sessions.append
    return sub


def connected(sub: Subscriber, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not sub.is_connected() and time.monotonic() < end:
        time.sleep(0.02)
    return sub.is_connected()


def publish_many(port: int, n: int, **auth) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="station")
    if auth:
        pub.username_pw_set(auth["username"], auth["password"])
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        infos = [pub.publish(f"fleet/s/sensor/p{k % 8}", str(k), qos=1) for k in range(n)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        pub.disconnect()
        pub.loop_stop()


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto (Debian package)")
def test_unacknowledged_messages_beyond_mosquittos_default_window_come_and_come_again(tmp_path):
    """1000 QoS 1 messages arrive with none acknowledged (mosquitto's default window is 20); a new connection
    on the same session gets them all again; once acknowledged, never again."""
    broker = Broker(tmp_path / "broker", users={"bridge": "pw", "station": "pw2"})
    broker.start()
    subs = []

    def bridge_session(collector: Collector) -> Subscriber:
        """A connection of the bridge's persistent session, its messages going to `collector`."""
        sub = subscriber(broker, collector)
        sub.username_pw_set("bridge", "pw")
        subs.append(sub)
        sub.start("127.0.0.1", broker.port)
        return sub

    try:
        first = Collector()
        sub = bridge_session(first)
        assert connected(sub)
        publish_many(broker.port, 1000, username="station", password="pw2")
        assert first.wait(1000), len(first.messages)
        assert sorted(int(m.payload) for m in first.messages) == list(range(1000))
        assert first.sessions == [False]
        sub.stop()

        again = Collector()
        sub = bridge_session(again)
        assert again.wait(1000), len(again.messages)
        assert again.sessions == [True]
        assert sorted(int(m.payload) for m in again.messages) == list(range(1000))
        stale = [m.packet_id for m in again.messages if m.connection != sub.connection]
        assert not stale
        sub.ack([m.packet_id for m in again.messages[:10]], sub.connection - 1)  # an old connection's: not sent
        sub.ack([m.packet_id for m in again.messages[10:]], sub.connection)
        time.sleep(0.5)  # the acknowledgements reach the broker before the disconnect
        sub.stop()

        last = Collector()
        sub = bridge_session(last)
        assert last.wait(10)
        time.sleep(1.0)  # anything else would come right behind
        assert sorted(int(m.payload) for m in last.messages) == sorted(int(m.payload) for m in again.messages[:10])
    finally:
        for s in subs:
            s.stop()
        broker.stop()


@pytest.mark.skipif(not (HAVE_MOSQUITTO and HAVE_OPENSSL), reason="needs mosquitto and openssl")
def test_tls_with_a_client_certificate_and_reconnecting_after_a_broker_restart(tmp_path):
    certs = make_certs(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=certs)
    broker.start()
    collector = Collector()
    sub = subscriber(broker, collector)
    sub.tls_set(ca_certs=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    try:
        sub.start("localhost", broker.port)
        assert connected(sub)
        broker.stop()
        end = time.monotonic() + 10
        while sub.is_connected() and time.monotonic() < end:
            time.sleep(0.02)
        assert not sub.is_connected()
        broker.start()
        assert connected(sub)
        assert len(collector.sessions) == 2
    finally:
        sub.stop()
        broker.stop()
