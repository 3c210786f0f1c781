"""A lean MQTT 5 subscriber for the bridge: a sans-I/O codec and one connection thread.

Theory of operation
-------------------
A ground server takes the whole fleet's telemetry, thousands of messages a second, in one
Python process. paho-mqtt spends about 100 µs of CPU on each received message (a select and
three reads per packet, a properties object per PUBLISH, one send per PUBACK), which alone
would take a whole core at 10,000 messages a second. The bridge needs little of MQTT: connect
(TLS, user name and password, a persistent session), subscribe at QoS 1, take PUBLISH
packets, acknowledge them later and keep the connection alive. This module does that:

- The codec (`encode_*`, `Decoder`, `parse_publish`) is pure: bytes in, packets out. The
  decoder splits whatever one read returned (up to 64 KB, hundreds of messages) into packets
  with slicing, so a message costs a few microseconds; a PUBLISH's properties are skipped.
- `Subscriber` runs one thread: connect, CONNACK, SUBSCRIBE, then read and hand each batch of
  messages to `on_messages`; it sends PINGREQ when nothing went out for half the keep-alive,
  and gives up a connection that stays silent for 1.5 keep-alives after one. On any failure it
  connects again after 1 s (2 s from the second try on), with the same client id and
  `clean_start=False`: the broker's session keeps what was not acknowledged and sends it again.
- `ack(packet_ids, connection)` sends every PUBACK of a commit in one write, from any thread,
  on the connection that brought the messages only.
- CONNECT carries `Receive Maximum`: how many unacknowledged messages the broker may have out
  to us. mosquitto's default for a client that names none is 20, which a bridge acknowledging
  once per spool commit would reach in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection: the session stays for its expiry interval
READ_BYTES = 65536
RECONNECT_S = (1.0, 2.0)  # the first delay, then every later one
CONNECT_TIMEOUT_S = 10.0


class ProtocolError(Exception):
    """The broker sent something this client cannot take (or refused us): the connection is closed."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    """An MQTT UTF-8 string: its length in two bytes, then its bytes."""
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def encode_connect(
    client_id: str,
    keepalive_s: int,
    session_expiry_s: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT with clean_start=False, a session expiry and a receive maximum."""
    flags = (0x80 if username else 0) | (0x40 if password is not None else 0)
    props = b"\x11" + session_expiry_s.to_bytes(4, "big") + b"\x21" + receive_maximum.to_bytes(2, "big")
    body = utf8("MQTT") + bytes([5, flags]) + keepalive_s.to_bytes(2, "big") + varint(len(props)) + props
    body += utf8(client_id)
    if username:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return _packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, filters: Sequence[str], qos: int) -> bytes:
    """SUBSCRIBE to every filter at one QoS (no properties)."""
    body = packet_id.to_bytes(2, "big") + b"\x00" + b"".join(utf8(f) + bytes([qos]) for f in filters)
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """One PUBACK (success, no reason code) per packet id, back to back."""
    return b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in packet_ids)


class Decoder:
    """Splits a byte stream into (packet type, flags, body) tuples."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Every whole packet in what arrived so far; a partial one waits for more."""
        buf = self._buf + data if self._buf else data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            length, shift, i, whole = 0, 0, pos + 1, False
            while i < end and i - pos <= 4:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    whole = True
                    break
                shift += 7
            if not whole:
                if i - pos > 4:
                    raise ProtocolError("a remaining length of more than 4 bytes")
                break  # the length itself is not complete yet
            if i + length > end:
                break
            first = buf[pos]
            out.append((first >> 4, first & 0x0F, buf[i : i + length]))
            pos = i + length
        self._buf = buf[pos:]
        return out


class Message(NamedTuple):
    """One PUBLISH as the bridge needs it (a named tuple: thousands are made a second)."""

    topic: str
    payload: bytes
    packet_id: int  # 0 for QoS 0
    qos: int
    connection: int = 0  # which connection brought it (an acknowledgement goes back on that one only)


def _read_varint(body: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = body[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def parse_publish(flags: int, body: bytes, connection: int = 0) -> Message:
    """A PUBLISH's topic, payload, packet id and QoS (its properties skipped)."""
    qos = (flags >> 1) & 0x03
    n = int.from_bytes(body[:2], "big")
    try:
        topic = body[2 : 2 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("a PUBLISH whose topic is not UTF-8") from None
    pos = 2 + n
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
    props, pos = _read_varint(body, pos)
    return Message(topic, body[pos + props :], packet_id, qos, connection)


def parse_connack(body: bytes) -> tuple[bool, int]:
    """(session present, reason code)."""
    if len(body) < 2:
        raise ProtocolError("a CONNACK shorter than 2 bytes")
    return bool(body[0] & 1), body[1]


class Subscriber:
    """One MQTT 5 connection that subscribes and hands received messages to `on_messages` in batches.

    `on_messages(messages)` runs on the connection's thread; an exception there is logged and the
    connection goes on. `on_connect(session_present)` runs at every CONNACK, before any message.
    """

    def __init__(
        self,
        client_id: str,
        filters: Sequence[str],
        qos: int,
        on_messages: Callable[[list[Message]], None],
        *,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        receive_maximum: int = 65535,
    ) -> None:
        self.client_id = client_id
        self.filters = list(filters)
        self.qos = qos
        self.on_messages = on_messages
        self.on_connect: Callable[[bool], None] = lambda _present: None  # at each CONNACK: session present?
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.username: str | None = None
        self.password: str | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.host, self.port = "127.0.0.1", 1883
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self._connected = False
        self._accepted = False  # the current connection's CONNACK said yes
        self.connection = 0  # counts the connections made; each message names the one that brought it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def username_pw_set(self, username: str, password: str | None = None) -> None:
        """Log in with a user name (and a password)."""
        self.username, self.password = username, password

    def tls_set(self, ca_certs: str | None = None, certfile: str | None = None, keyfile: str | None = None) -> None:
        """Connect over TLS, checking the server against ca_certs (else the system's CAs), with a client certificate."""
        context = ssl.create_default_context(cafile=ca_certs)
        if certfile:
            context.load_cert_chain(certfile, keyfile)
        self.ssl_context = context

    def is_connected(self) -> bool:
        return self._connected

    def start(self, host: str, port: int) -> None:
        """Connect (and reconnect) in a thread of its own."""
        self.host, self.port = host, port
        self._thread = threading.Thread(target=self._run, name="mqtt5-subscriber", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect normally (the broker keeps the session) and end the thread."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._send(DISCONNECT_PACKET)
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def ack(self, packet_ids: Sequence[int], connection: int) -> None:
        """PUBACK these messages in one write, if the connection that brought them is still the one open.

        Else nothing is sent: the broker sends the messages again on the new connection (and a
        packet id of the old one may already name another message there).
        """
        if not packet_ids:
            return
        try:
            self._send(encode_pubacks(packet_ids), connection)
        except OSError as exc:
            log.debug("mqtt5: acknowledgements not sent (%s); the broker will send those messages again", exc)

    def _send(self, data: bytes, connection: int | None = None) -> None:
        """Write whole packets; a failed write (perhaps half a packet out) ends the connection."""
        with self._send_lock:
            if self._sock is None:
                raise OSError("not connected")
            if connection is not None and connection != self.connection:
                return
            try:
                self._sock.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # the reader sees it and connects again
                raise
            self._last_sent = time.monotonic()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._session()
            except (OSError, ProtocolError) as exc:
                if self._accepted:
                    attempt = 0  # a new outage: say so again
                if not self._stop.is_set():
                    level = logging.WARNING if attempt == 0 else logging.DEBUG
                    log.log(level, "mqtt5: %s:%d: %s; connecting again", self.host, self.port, exc)
            finally:
                self._connected = False
                with self._send_lock:
                    sock, self._sock = self._sock, None
                if sock is not None:
                    sock.close()
            self._stop.wait(RECONNECT_S[min(attempt, 1)])
            attempt += 1

    def _session(self) -> None:
        """One connection, from CONNECT to its end (raises why it ended, returns on stop)."""
        sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CONNECT_TIMEOUT_S)  # for writes and a TLS record's rest; reads wait in select()
        keepalive = self.keepalive_s
        tick = min(1.0, keepalive / 2) if keepalive else 1.0
        self._accepted = False
        with self._send_lock:
            self._sock = sock
            self.connection += 1
            connection = self.connection
        if self._stop.is_set():
            return
        connect = encode_connect(
            self.client_id, keepalive, self.session_expiry_s, self.receive_maximum, self.username, self.password
        )
        self._send(connect)
        decoder = Decoder()
        started = last_heard = ping_sent = time.monotonic()
        acknowledged = False  # the CONNACK came
        while not self._stop.is_set():
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending()  # decrypted bytes select() cannot see
            data = sock.recv(READ_BYTES) if pending or select.select([sock], [], [], tick)[0] else None
            now = time.monotonic()
            if data == b"":
                raise OSError("the broker closed the connection")
            if data is not None:
                last_heard = now
            elif not acknowledged and now - started > CONNECT_TIMEOUT_S:
                raise OSError("no CONNACK")
            if keepalive and now - self._last_sent >= keepalive / 2:
                self._send(PINGREQ_PACKET)
                ping_sent = now
            if keepalive and ping_sent > last_heard and now - last_heard > 1.5 * keepalive:
                raise OSError(f"nothing heard for {now - last_heard:.0f} s")
            if not data:
                continue
            messages = []
            for kind, flags, body in decoder.feed(data):
                if kind == PUBLISH:
                    messages.append(parse_publish(flags, body, connection))
                elif kind == CONNACK:
                    present, code = parse_connack(body)
                    if code >= 0x80:
                        raise ProtocolError(f"the broker refused the connection (reason code {code:#04x})")
                    acknowledged = self._accepted = True
                    self.on_connect(present)
                    self._send(encode_subscribe(1, self.filters, self.qos))
                elif kind == SUBACK:
                    refused = [f for f, code in zip(self.filters, body[3:], strict=False) if code >= 0x80]
                    if refused:
                        log.warning("mqtt5: the broker refused the subscription to %s", ", ".join(refused))
                    self._connected = True
                elif kind == DISCONNECT:
                    code = body[0] if body else 0
                    raise ProtocolError(f"the broker disconnected us (reason code {code:#04x})")
            if messages:
                try:
                    self.on_messages(messages)
                except Exception:  # never ends the connection
                    log.exception("mqtt5: handling %d message(s) failed", len(messages))
