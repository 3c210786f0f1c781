"""The store-and-forward spool: every record is written once to SQLite; each sink reads it from there.

Theory of operation
-------------------
Records (a kind, a timestamp, a JSON body) get increasing ids as they are appended. Appends
only go to a list in memory; a committer thread writes that list to SQLite in one
transaction every `commit_interval_s` (WAL, `synchronous=FULL`: one fsync a second, so a
power cut loses at most the last uncommitted second and never corrupts the file).

Each sink has a forwarder thread and a cursor: every record with an id at or below the
cursor was confirmed by that sink (MQTT: PUBACK; InfluxDB: a 2xx), set aside as rejected,
or is of a kind the sink does not take. A forwarder reads records after its cursor, from the
file and then from the not-yet-committed list, so live data goes out within milliseconds.
Cursors are saved with each commit; a record is deleted once every cursor has passed it.
After a crash a sink starts again from its saved cursor: what was confirmed but not yet saved
is sent again (InfluxDB overwrites a point with the same series and timestamp, so the replay
is idempotent; MQTT is at-least-once).

Backlog. When a sink comes back with more than `BACKLOG_MIN` records waiting, its forwarder
splits them at a mark (the newest id then): records after the mark are live and go first on
every round; the backlog up to the mark is sent oldest first in chunks, at most
`replay_per_s` records a second, marked `replay` so live consumers can tell. When the backlog
is done the cursor jumps to where the live lane got to. If the sink fails again, the lanes
fall back to the saved cursor and what was confirmed after it is simply sent again.

Budget. When the file's used pages exceed `max_mb`, the oldest records are deleted whether or
not they were sent, the count is kept (`dropped`), and `on_dropped` is told so the service can
raise an advisory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKLOG_MIN = 500  # records waiting when a sink returns: above this, live data gets its own lane
LIVE_BATCH = 500
REPLAY_CHUNK = 2000
IDLE_WAIT_S = 0.5
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 15.0
MAX_PENDING = 200_000  # records held in memory when the file cannot be written

SCHEMA = """
CREATE TABLE IF NOT EXISTS record (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, time_ns INTEGER NOT NULL,
                                   body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (sink TEXT PRIMARY KEY, done INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (id INTEGER NOT NULL, sink TEXT NOT NULL, kind TEXT NOT NULL, time_ns INTEGER,
                                     body BLOB NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled record: what it is, when it happened (ns since the epoch), and its JSON object."""

    id: int
    kind: str
    time_ns: int
    body: dict


class SpoolInUse(Exception):
    """Another process holds the spool file."""


class SinkUnavailable(Exception):
    """The sink cannot take records now (network, server, authentication): try again later."""


@dataclass
class SendResult:
    """What a sink did with a batch: how many leading records it confirmed, and which it rejected."""

    confirmed: int  # the first `confirmed` records of the batch are done (rejected ones included)
    rejected: dict[int, str] = field(default_factory=dict)  # record id -> reason


class SpoolSink(Protocol):
    """What a forwarder needs from a sink.

    Optional attributes: `live_batch` (most live records per send, default LIVE_BATCH) and
    `live_interval_s` (least time between live sends, default 0): MQTT sends one message at a
    time, so that a broker's Nagle delay never holds one behind another; InfluxDB gathers a
    second of records per HTTP request.
    """

    name: str
    kinds: frozenset[str]

    def ready(self) -> bool:
        """Whether sending could work now (e.g. connected)."""

    def send(self, records: Sequence[Record], replay: bool) -> SendResult:
        """Deliver records in order; raise SinkUnavailable to be retried later."""


def time_ns(t: float) -> int:
    """Epoch seconds to integer nanoseconds, rounded to the microsecond (stable under float noise)."""
    return round(t * 1e6) * 1000


class Spool:
    """The SQLite store-and-forward log. Thread-safe; `start()` runs the committer.

    `append` only takes a short in-memory lock, never one held across disk I/O: the commit
    writes through a connection of its own while readers use theirs (WAL lets both go on),
    so a slow fsync on an SD card never holds up the main loop or a forwarder.
    """

    def __init__(
        self,
        path: str | None,
        max_mb: float = 512.0,
        commit_interval_s: float = 1.0,
        replay_per_s: float = 10_000.0,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.temporary = path is None  # no file asked for: a private temp file, removed at close
        if path is None:
            fd, path = tempfile.mkstemp(prefix="hullwatch-spool-", suffix=".sqlite")
            os.close(fd)
        self.path = path
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.commit_interval_s = commit_interval_s
        self.replay_per_s = replay_per_s
        self.on_dropped = on_dropped or (lambda _n: None)
        self.on_commit: Callable[[int], None] | None = None  # told the newest id now in the file
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock_file = open(path + ".lock", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SpoolInUse(f"{path} is in use by another hullwatch") from None
        self._db = self._connect()  # the writer's connection, used under _write_lock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA journal_size_limit=8388608")
        self._db.executescript(SCHEMA)
        self._write_lock = threading.Lock()
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards the in-memory state below; never held across disk I/O
        self._appended = threading.Condition(self._lock)
        self._pending: list[Record] = []  # appended, not yet being committed
        self._committing: list[Record] = []  # being written right now: still readable from memory
        self.cursors: dict[str, int] = dict(self._db.execute("SELECT sink, done FROM cursor").fetchall())
        last = self._db.execute("SELECT max(id) FROM record").fetchone()[0]
        self._next_id = max([last or 0, *self.cursors.values()]) + 1  # ids never go back, even on an empty file
        self.counters: dict[str, int] = dict(self._db.execute("SELECT name, value FROM counter").fetchall())
        self._sinks: list[str] = []
        self._forwarders: dict[str, Forwarder] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.commits = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        db.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a commit survives a power cut once it returns
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's own read connection."""
        db = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = self._connect()
            with self._lock:
                self._reader_connections.append(db)
        return db

    # -- writing --------------------------------------------------------------------------------

    def append(self, kind: str, t: float, body: dict) -> int:
        """Spool one record (in memory until the next commit); its id."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._pending.append(Record(rid, kind, time_ns(t), body))
            if len(self._pending) > MAX_PENDING:
                del self._pending[: len(self._pending) - MAX_PENDING]
                self._count("dropped", 1)
            self._appended.notify_all()
            return rid

    def commit(self) -> None:
        """Write what was appended, save the cursors, delete what every sink has, keep the budget."""
        with self._write_lock:
            with self._lock:
                batch = self._committing = self._pending
                self._pending = []
                committed_id = self._next_id - 1
                cursors = list(self.cursors.items())
                counters = list(self.counters.items())
                floor = min((self.cursors.get(s, 0) for s in self._sinks), default=None)
            try:  # whatever fails, the transaction is rolled back and the batch kept for the next try
                rows = [(r.id, r.kind, r.time_ns, json.dumps(r.body, separators=(",", ":"))) for r in batch]
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO record (id, kind, time_ns, body) VALUES (?, ?, ?, ?)", rows
                )
                self._db.executemany("INSERT OR REPLACE INTO cursor VALUES (?, ?)", cursors)
                self._db.executemany("INSERT OR REPLACE INTO counter VALUES (?, ?)", counters)
                if floor is not None:
                    self._db.execute("DELETE FROM record WHERE id <= ?", (floor,))
                self._db.execute("COMMIT")
            except Exception:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                with self._lock:
                    self._pending = batch + self._pending  # keep them for the next try
                    self._committing = []
                raise
            with self._lock:
                self._committing = []
                self.commits += 1
            dropped = self._enforce_budget()
        if dropped:
            self.on_dropped(dropped)
        if self.on_commit is not None:
            self.on_commit(committed_id)

    def _enforce_budget(self) -> int:
        """Delete the oldest records while the used pages exceed the budget; how many went."""
        used = (self._pragma("page_count") - self._pragma("freelist_count")) * self._pragma("page_size")
        if used <= self.max_bytes:
            return 0
        count, first = self._db.execute("SELECT count(*), min(id) FROM record").fetchone()
        if not count:
            return 0
        excess = used - int(self.max_bytes * 0.9)  # make room for a while, not one record at a time
        n = min(count, max(1, int(count * excess / used) + 1))
        self._db.execute("DELETE FROM record WHERE id < ?", (first + n,))
        with self._lock:
            self._count("dropped", n)
            dropped = self.counters["dropped"]
        self._db.execute("INSERT OR REPLACE INTO counter VALUES ('dropped', ?)", (dropped,))
        log.warning("spool: over its budget of %.0f MB, dropped the %d oldest records", self.max_bytes / 2**20, n)
        return n

    def _pragma(self, name: str, db: sqlite3.Connection | None = None) -> int:
        return (db or self._db).execute(f"PRAGMA {name}").fetchone()[0]

    def _count(self, name: str, n: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def reject(self, sink: str, records: Iterable[Record], reasons: dict[int, str], quiet: bool = False) -> None:
        """Set records a sink refused aside (kept for a person to look at, never sent again); quiet: the caller logs."""
        rows = [
            (r.id, sink, r.kind, r.time_ns, json.dumps(r.body), reasons[r.id], time.time())
            for r in records
            if r.id in reasons
        ]
        if not rows:
            return
        with self._write_lock:
            self._db.executemany("INSERT INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        with self._lock:
            self._count(f"rejected.{sink}", len(rows))
        if not quiet:
            log.error("spool: %s rejected %d record(s), set aside: %s", sink, len(rows), next(iter(reasons.values())))

    # -- reading --------------------------------------------------------------------------------

    def _in_memory(self) -> list[Record]:
        """The records not yet known to be in the file (taken before reading the file)."""
        with self._lock:
            return self._committing + self._pending

    def read(self, after: int, limit: int, upto: int | None = None) -> list[Record]:
        """Up to `limit` records with after < id (<= upto), oldest first, committed or not."""
        memory = self._in_memory()  # first: a record is then in this list or already in the file
        hi = self._next_id if upto is None else upto
        if memory and memory[0].id <= after + 1 or not memory and after >= self._next_id - 1:
            # the live case: everything after `after` is still in memory (ids ascend), no disk read
            return [r for r in memory if after < r.id <= hi][:limit]
        rows = (
            self._reader()
            .execute(
                "SELECT id, kind, time_ns, body FROM record WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after, hi, limit),
            )
            .fetchall()
        )
        out = [Record(i, k, t, json.loads(b)) for i, k, t, b in rows]
        if len(out) < limit:
            start = out[-1].id if out else after
            out += [r for r in memory if start < r.id <= hi][: limit - len(out)]
        return out

    def sent(self, sink: str) -> int:
        """How many records a sink has confirmed since the daemon started."""
        forwarder = self._forwarders.get(sink)
        return forwarder.sent if forwarder else 0

    @property
    def last_id(self) -> int:
        """The id of the newest record appended."""
        return self._next_id - 1

    def wait_for_append(self, after: int, timeout_s: float) -> None:
        """Block until a record newer than `after` exists, or the timeout."""
        with self._lock:
            if self._next_id - 1 <= after:
                self._appended.wait(timeout_s)

    def set_cursor(self, sink: str, done: int) -> None:
        """A sink has every record up to `done` (saved with the next commit)."""
        with self._lock:
            if done > self.cursors.get(sink, 0):
                self.cursors[sink] = done

    def stats(self) -> dict[str, Any]:
        """Depth (records some sink still needs), the oldest such record's age, sizes and counters."""
        memory = self._in_memory()
        with self._lock:
            floor = min((self.cursors.get(s, 0) for s in self._sinks), default=self._next_id - 1)
            backlog = {f"backlog.{s}": max(0, self._next_id - 1 - self.cursors.get(s, 0)) for s in self._sinks}
            dropped = self.counters.get("dropped", 0)
        db = self._reader()
        depth, first, newest = db.execute(
            "SELECT count(*), min(time_ns), max(id) FROM record WHERE id > ?", (floor,)
        ).fetchone()
        unsent = [r for r in memory if r.id > max(floor, newest or 0)]  # not in the file yet
        depth += len(unsent)
        if first is None:
            first = min((r.time_ns for r in unsent), default=None)
        return {
            "depth": depth,
            "oldest_unsent_s": 0.0 if first is None else max(0.0, time.time() - first / 1e9),
            "size_bytes": self._pragma("page_count", db) * self._pragma("page_size", db),
            "dropped": dropped,
            "commits": self.commits,
            **backlog,
        }

    # -- threads --------------------------------------------------------------------------------

    def start(self, sinks: Sequence[SpoolSink]) -> None:
        """Run the committer and one forwarder per sink."""
        with self._lock:
            self._sinks = [s.name for s in sinks]
            for s in sinks:
                self.cursors.setdefault(s.name, 0)
        self._forwarders = {s.name: Forwarder(self, s, self._stop) for s in sinks}
        self._threads = [threading.Thread(target=self._commit_loop, name="spool-commit", daemon=True)]
        self._threads += [
            threading.Thread(target=f.run, name=f"spool-{name}", daemon=True) for name, f in self._forwarders.items()
        ]
        for t in self._threads:
            t.start()

    def _commit_loop(self) -> None:
        failing = False
        while not self._stop.wait(self.commit_interval_s):
            try:
                self.commit()
                if failing:
                    log.info("spool: writing %s again", self.path)
                failing = False
            except sqlite3.Error as exc:
                if not failing:
                    log.error("spool: cannot write %s: %s (holding records in memory)", self.path, exc)
                failing = True
            except Exception:
                log.exception("spool: commit failed")

    def close(self, drain_s: float = 0.0) -> None:
        """Give the forwarders up to `drain_s` to catch up, stop the threads, commit, close the file."""
        end = time.monotonic() + drain_s
        while time.monotonic() < end and self.stats()["depth"] > 0:
            time.sleep(0.05)
        self._stop.set()
        with self._lock:
            self._appended.notify_all()
        for t in self._threads:
            t.join(timeout=5.0)
        try:
            self.commit()
        except sqlite3.Error as exc:
            log.error("spool: final commit failed: %s", exc)
        with self._lock:
            readers, self._reader_connections = self._reader_connections, []
        for db in [*readers, self._db]:
            db.close()
        self._lock_file.close()
        if self.temporary:
            for suffix in ("", "-wal", "-shm", ".lock"):
                with contextlib.suppress(OSError):
                    os.unlink(self.path + suffix)


class Forwarder:
    """Moves one sink's records from the spool to the sink: live first, then the backlog, bounded."""

    def __init__(self, spool: Spool, sink: SpoolSink, stop: threading.Event) -> None:
        self.spool = spool
        self.sink = sink
        self.stop = stop
        self.done = spool.cursors.get(sink.name, 0)  # every id <= done is handled
        self.mark = self.done  # backlog lane: (done, mark]; live lane: (live_done, ...)
        self.live_done = self.done
        self._retry_s = RETRY_FIRST_S
        self._failing = False
        self._down_logged = False
        self._budget = 0.0
        self._budget_at = time.monotonic()
        self.live_batch = getattr(sink, "live_batch", LIVE_BATCH)
        self.live_interval_s = getattr(sink, "live_interval_s", 0.0)
        self._next_live = 0.0
        self.sent = 0

    def run(self) -> None:
        """The forwarder thread: never raises."""
        self._split_if_backlog()
        while not self.stop.is_set():
            try:
                busy = self.step()
            except SinkUnavailable as exc:
                self._fail(str(exc))
                continue
            except Exception:
                log.exception("spool: forwarding to %s failed", self.sink.name)
                self._fail("internal error")
                continue
            if not busy:
                delay = self._next_live - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                else:
                    self.spool.wait_for_append(self.live_done, IDLE_WAIT_S)

    def step(self) -> bool:
        """One round: the live lane, then a chunk of backlog; whether anything was sent."""
        if not self.sink.ready():
            if not self._failing:
                self._fail("not connected", wait=False)
            self.stop.wait(0.2)
            return True
        if self._failing:
            self._failing = False
            self._split_if_backlog()
        busy = False
        if time.monotonic() >= self._next_live:
            live = self.spool.read(self.live_done, self.live_batch)
            if live:
                if len(live) < self.live_batch:  # caught up: let the next ones gather for an interval
                    self._next_live = time.monotonic() + self.live_interval_s
                self.live_done = self._deliver(live, replay=False)
                busy = True
        if self.mark > self.done:
            chunk = self._allowance()
            if chunk:
                backlog = self.spool.read(self.done, chunk, upto=self.mark)
                self.done = self._deliver(backlog, replay=True) if backlog else self.mark
                busy = True
            else:
                self.stop.wait(0.02)
            if self.done >= self.mark:
                self.done = self.mark = max(self.live_done, self.mark)
                log.info("spool: %s has caught up", self.sink.name)
        else:
            self.done = self.mark = self.live_done
        self.spool.set_cursor(self.sink.name, self.done)
        if self._down_logged and busy:
            self._down_logged = False
            self._retry_s = RETRY_FIRST_S
            log.info("spool: %s is back; %d record(s) to catch up", self.sink.name, self.spool.last_id - self.done)
        return busy

    def _deliver(self, records: list[Record], replay: bool) -> int:
        """Send what the sink takes; the id up to which everything is handled."""
        wanted = [r for r in records if r.kind in self.sink.kinds]
        if not wanted:
            return records[-1].id
        result = self.sink.send(wanted, replay)
        if result.rejected:
            self.spool.reject(self.sink.name, wanted, result.rejected)
        self.sent += result.confirmed - len(result.rejected)
        if result.confirmed < len(wanted):  # the rest stays for the next round
            return wanted[result.confirmed].id - 1 if result.confirmed else records[0].id - 1
        return records[-1].id

    def _split_if_backlog(self) -> None:
        waiting = self.spool.last_id - self.done
        if waiting > BACKLOG_MIN:
            self.mark = self.live_done = self.spool.last_id
            log.debug("spool: %d record(s) of backlog for %s; live data goes first", waiting, self.sink.name)
        else:
            self.mark = self.live_done = self.done

    def _allowance(self) -> int:
        """How many backlog records may go now (a token bucket of replay_per_s)."""
        now = time.monotonic()
        rate = self.spool.replay_per_s
        self._budget = min(rate, self._budget + (now - self._budget_at) * rate)
        self._budget_at = now
        n = int(min(self._budget, REPLAY_CHUNK))
        self._budget -= n
        return n

    def _fail(self, reason: str, wait: bool = True) -> None:
        if not self._down_logged:  # once per outage, not once per retry
            log.warning("spool: %s unavailable (%s); keeping records", self.sink.name, reason)
            self._down_logged = True
        self._failing = True
        self.mark = self.live_done = self.done  # what the live lane confirmed past `done` goes again
        if wait:
            self.stop.wait(self._retry_s)
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
