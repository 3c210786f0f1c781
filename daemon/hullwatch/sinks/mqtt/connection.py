"""The broker connection's setup and its logging: credentials, TLS files, rate-limited logs.

Nothing here talks to the network: `apply_credentials` reads the password and TLS files onto a
paho client (MqttSetupError naming the key when one is unusable), `Throttle` and
`PahoLogFilter` keep a broker that is away for hours from filling the journal, and `guarded`
keeps an exception in a publishing method or a paho callback from escaping.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from hullwatch.config import MqttConfig

RECONNECT_MIN_S = 1  # paho retries forever, every 1 s then 2 s
RECONNECT_MAX_S = 2
LOG_INTERVAL_S = 60.0  # each kind of connection problem is logged at most this often

F = TypeVar("F", bound=Callable[..., Any])


class MqttSetupError(Exception):
    """The [mqtt] settings cannot be used (unreadable password or TLS files): a configuration error."""


class Throttle:
    """Logs each kind of problem at most once per interval, counting the ones it held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval_s
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log `msg` unless this kind was logged less than an interval ago."""
        now = time.monotonic()
        with self._lock:
            last, held = self._state.get(kind, (None, 0))
            if last is not None and now - last < self._interval:
                self._state[kind] = (last, held + 1)
                return
            self._state[kind] = (now, 0)
        if held:
            msg += " (%d more like this since the last report)"
            args = (*args, held)
        self._logger.log(level, msg, *args, exc_info=exc_info)


class PahoLogFilter(logging.Filter):
    """Lets each of paho's messages (INFO and up) through at most once a minute.

    paho logs an ERROR on every failed reconnect cycle ("Client is not connected", a TLS
    alert), i.e. every 2 s for as long as a broker is away; the first of each says why.
    """

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self._interval = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        key = str(record.msg)[:60]
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            return False
        if len(self._last) > 100:
            self._last.clear()
        self._last[key] = now
        return True


paho_log = logging.getLogger("hullwatch.sinks.mqtt.paho")
paho_log.addFilter(PahoLogFilter())


def guarded(kind: str) -> Callable[[F], F]:
    """Decorate a method so that no exception leaves it: it is logged through `self._throttle` instead."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def guarded_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception:
                self._throttle(f"bug:{kind}", logging.ERROR, "MQTT sink: %s failed", kind, exc_info=True)
                return None

        return guarded_call  # type: ignore[return-value]

    return wrap


def apply_credentials(client: mqtt.Client, cfg: MqttConfig, default_username: str | None = None) -> str | None:
    """[mqtt] username, password (read from its file) and TLS onto a paho client; MqttSetupError naming the key.

    A password without a user name logs in as `default_username` (a station: its own name).
    Returns the user name used, None for an anonymous connection.
    """
    password = None
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise MqttSetupError(f"mqtt.password_file: cannot read {cfg.password_file}: {reason}") from None
    username = cfg.username or (default_username if password is not None else None)
    if password is not None and not username:
        raise MqttSetupError("mqtt.password_file: given without mqtt.username")
    if username:
        client.username_pw_set(username, password)
    if cfg.tls is not None:
        check_tls_files(cfg.tls)
        try:
            client.tls_set(ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttSetupError(f"mqtt.tls: {exc}") from None
    return username


def check_tls_files(tls: Any) -> None:
    """Each [mqtt.tls] file readable and what it should be; MqttSetupError naming the key and the file."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise MqttSetupError(f"mqtt.tls.{key}: cannot read {path}: {exc.strerror or exc}") from None
    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise MqttSetupError(f"mqtt.tls.ca_file: {tls.ca_file} holds no usable CA certificate ({exc})") from None
    if tls.cert_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, ValueError) as exc:
            files = f"{tls.cert_file} and {tls.key_file}" if tls.key_file else tls.cert_file
            raise MqttSetupError(
                f"mqtt.tls.cert_file: {files} are no client certificate with its private key ({exc})"
            ) from None
