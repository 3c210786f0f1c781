"""Real mosquitto brokers for tests: anonymous, password or TLS listeners on free loopback ports.

    certs = make_certs(tmp_dir)                     # CA, server (SAN localhost/127.0.0.1), client; ~0.1 s
    broker = Broker(tmp_dir, users={"hullwatch": "pw"}, tls=certs)
    broker.start(); broker.stop(); broker.start()   # restartable on the same port
    Listener(broker.port).wait_for(...)             # a paho subscriber that records what arrives
    ShippedBroker(tmp_dir, certs, users)            # deploy/mosquitto as shipped, its own acl file
    HoldingProxy(broker.port).hold() / .cut()       # a link that keeps the broker's PUBACKs back, then drops

Every broker runs as `user root` (so it can read 0600 keys when tests run as root) with
`persistence false` (unless `persistence=True`: retained messages saved in its directory at
a clean stop and restored at start), binds 127.0.0.1 only and logs to a file in its directory. Processes are
stopped by their own handle, never by name.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
HAVE_MOSQUITTO = shutil.which("mosquitto") is not None and shutil.which("mosquitto_passwd") is not None
HAVE_OPENSSL = shutil.which("openssl") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 5.0, up: bool = True) -> bool:
    """Wait until something accepts on 127.0.0.1:port (or, with up=False, until nothing does)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return True
        except OSError:
            if not up:
                return True
        time.sleep(0.02)
    return False


@dataclass(frozen=True)
class Certs:
    """PEM files of a throw-away CA, a server certificate and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(directory: Path) -> Certs:
    """Create a CA, a server certificate (SAN DNS:localhost, IP:127.0.0.1) and a client certificate (CN hullwatch)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=CA", *ca_ext,
             cwd=d)  # fmt: skip
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "hullwatch", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + ext
        )
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    for k in ("ca.key", "server.key", "client.key"):
        (d / k).chmod(0o600)
    return Certs(
        str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"), str(d / "client.crt"), str(d / "client.key")
    )


class Broker:
    """One mosquitto process with one listener; start/stop/restart keep the port."""

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        tls: Certs | None = None,
        require_certificate: bool = True,
        acl: str | None = None,
        acl_file: Path | None = None,
        port: int | None = None,
        persistence: bool = False,
    ) -> None:
        self._setup(directory, port, tls)
        lines = [
            "user root",
            *(["persistence true", f"persistence_location {self.dir}/"] if persistence else ["persistence false"]),
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "per_listener_settings true",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
        ]
        if users:
            lines.append(f"password_file {write_passwords(self.dir / 'passwd', users)}")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        elif acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
            lines.append(f"require_certificate {'true' if require_certificate else 'false'}")
        self.conf.write_text("\n".join(lines) + "\n")

    def _setup(self, directory: Path, port: int | None, tls: Certs | None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.ports = [self.port]  # every listener, waited for at start
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 5.0) -> Broker:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not all(wait_port(p, timeout) for p in self.ports):
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            self.stop()
            raise RuntimeError(
                f"mosquitto did not start on {self.port}: {err.decode(errors='replace')}{self.log_text()}"
            )
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait until the port is free."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        wait_port(self.port, 2.0, up=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for Listener/publish() that reach this broker (TLS included)."""
        return {"port": self.port, "tls": self.tls}


class ShippedBroker(Broker):
    """deploy/mosquitto/mosquitto.conf as shipped, reading the shipped acl file itself.

    Only what a test machine needs is changed: both listeners on free loopback ports (`port`
    plain, `tls_port` with mutual TLS from `certs`), `user root`, persistence, the log and the
    password file in `directory`. `users` maps user name to password.
    """

    def __init__(self, directory: Path, certs: Certs, users: dict[str, str]) -> None:
        self._setup(directory, None, None)
        self.tls_port = free_port()
        self.ports.append(self.tls_port)
        self.certs = certs
        conf = (DEPLOY / "mosquitto.conf").read_text()
        for shipped, here in (
            ("user mosquitto", "user root"),
            ("log_dest stderr", f"log_dest file {self.log}"),
            ("persistence_location /var/lib/mosquitto/", f"persistence_location {self.dir}/"),
            ("listener 1883 127.0.0.1\n", f"listener {self.port} 127.0.0.1\n"),
            ("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n"),
            ("password_file /etc/mosquitto/passwd\n", f"password_file {self.dir / 'passwd'}\n"),
            ("acl_file /etc/mosquitto/acl\n", f"acl_file {DEPLOY / 'acl'}\n"),
            ("cafile /etc/mosquitto/certs/ca.crt\n", f"cafile {certs.ca}\n"),
            ("certfile /etc/mosquitto/certs/server.crt\n", f"certfile {certs.server_cert}\n"),
            ("keyfile /etc/mosquitto/certs/server.key\n", f"keyfile {certs.server_key}\n"),
        ):
            if shipped not in conf:
                raise AssertionError(f"deploy/mosquitto/mosquitto.conf no longer has {shipped.strip()!r}")
            conf = conf.replace(shipped, here)
        settings = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
        if "/etc/" in settings or "/var/" in settings:
            raise AssertionError("deploy/mosquitto/mosquitto.conf names a path this fixture does not replace")
        write_passwords(self.dir / "passwd", users)
        self.conf.write_text(conf)

    def tls_options(self) -> dict[str, Any]:
        """Keyword arguments for Listener/publish() that reach the TLS listener."""
        return {"port": self.tls_port, "tls": self.certs}


def write_passwords(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file with these users (name -> password)."""
    for i, (user, password) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=10)
    return path


Message = tuple[float, str, bytes, bool]  # (arrival monotonic time, topic, payload, retained)


class Listener:
    """A paho subscriber recording every message (with its retain flag) in a thread-safe list."""

    def __init__(
        self,
        port: int,
        topic: str | list[str] = "#",
        *,
        tls: Certs | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.messages: list[Message] = []
        self.granted: list[bool] = []  # per topic filter, from the SUBACK: whether the broker took it
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = _client(tls, username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        filters = [(t, 1) for t in ([topic] if isinstance(topic, str) else topic)]
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(filters) if not rc.is_failure else None
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"listener could not subscribe to {topic} on port {port}")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self.granted = [not rc.is_failure for rc in reason_codes]
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[Message]:
        """The messages received on exactly this topic, oldest first."""
        with self._lock:
            return [m for m in self.messages if m[1] == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m[2] for m in self.on(topic)]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p in self.payloads(topic)]

    def wait_for(self, pred: Any, timeout: float = 5.0, since: int = 0) -> Message | None:
        """The first message (index >= since) for which pred(message) is true, waiting up to timeout."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                for m in self.messages[since:]:
                    if pred(m):
                        return m
            if time.monotonic() >= end:
                return None
            time.sleep(0.02)

    def wait_topic(
        self, topic: str, timeout: float = 5.0, payload: bytes | None = None, since: int = 0
    ) -> Message | None:
        return self.wait_for(lambda m: m[1] == topic and (payload is None or m[2] == payload), timeout, since)

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class HoldingProxy:
    """A TCP proxy on loopback in front of a broker: `hold()` keeps back what the broker sends to its
    clients (PUBACKs, CONNACKs) from then on; `cut()` closes every connection, as a dropped link does.
    Connections made after a cut go both ways again. Its threads are daemon threads."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._holding = False
        self._sockets: list[socket.socket] = []
        self.held = 0  # bytes kept back
        threading.Thread(target=self._accept, name="holding-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    hold = from_broker and self._holding
                    if hold:
                        self.held += len(data)
                if not hold:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def cut(self) -> None:
        """Drop every connection (what was held is lost with it); new ones are forwarded both ways."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._holding = False
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._server.close()
        self.cut()


def _client(
    tls: Certs | None, username: str | None, password: str | None, protocol: int = mqtt.MQTTv311
) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    if username:
        c.username_pw_set(username, password)
    if tls is not None:
        c.tls_set(ca_certs=tls.ca, certfile=tls.client_cert or None, keyfile=tls.client_key or None)
    return c


def retained(
    port: int, topic: str = "#", *, tls: Certs | None = None, wait: float = 0.3, **auth: Any
) -> dict[str, bytes]:
    """The retained messages under a topic filter, read by a fresh subscriber: {topic: payload}."""
    listener = Listener(port, topic, tls=tls, **auth)
    try:
        time.sleep(wait)  # mosquitto sends retained messages right behind the SUBACK
        return {t: p for _, t, p, r in listener.messages if r}
    finally:
        listener.close()


def publish(
    port: int,
    topic: str,
    payload: bytes | str,
    *,
    retain: bool = False,
    qos: int = 1,
    tls: Certs | None = None,
    user_properties: dict[str, str] | None = None,
    **auth: Any,
) -> None:
    """Publish one message with a throw-away paho client and wait until the broker has it.

    With user_properties, the client speaks MQTT 5 and the message carries them.
    """
    protocol = mqtt.MQTTv5 if user_properties is not None else mqtt.MQTTv311
    c = _client(tls, auth.get("username"), auth.get("password"), protocol)
    properties = None
    if user_properties is not None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = list(user_properties.items())
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
