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

Pipelining. A sink with a `submit` method (MQTT) gets its live records without a wait per
record: the live lane hands over whatever is new, up to the sink's `window` of unconfirmed
records, and the sink reports confirmations as they come (MQTT: each PUBACK, in any order).
The live cursor is the newest id below the oldest record still unconfirmed, so a round trip
costs no throughput. When the sink fails (disconnected, or no confirmation for
`CONFIRM_TIMEOUT_S`), whatever was handed over and not confirmed goes again from the cursor.

Backlog. When a sink comes back with more than `BACKLOG_MIN` records waiting, its forwarder
splits them at a mark (the newest id then): records after the mark are live and go first on
every round; the backlog up to the mark is sent oldest first in chunks, at most
`replay_per_s` records a second, marked `replay` so live consumers can tell. When the backlog
is done the cursor jumps to where the live lane got to. If the sink fails again, the lanes
fall back to the saved cursor and what was confirmed after it is simply sent again.

Budget. When the file's used pages exceed `max_mb`, the oldest records are deleted whether or
not they were sent, the count is kept (`dropped`), and `on_dropped` is told so the service can
raise an advisory.

Faults. A file SQLite finds corrupt (garbage, a zeroed header, a truncation, a bad page met by
any query, at start or later) is moved aside with its WAL as `<path>.corrupt-<time>` (for a
person to look at, e.g. with `sqlite3 ... .recover`) and a fresh file takes its place; records
not yet in the file stay in memory and go to the new one, the count of files moved aside is
kept (`corrupt`) and `last_fault` says what happened. Every use of the file runs through a gate:
many users at once, or one recovery alone, so no connection is closed under a query. While the
file cannot be written (a full disk), `problem` says why and records wait in memory (up to
`MAX_PENDING`, then the oldest are dropped and counted).

The alarm book. The file also keeps the alarm lifecycle's state across restarts, in a table of
its own (`alarm_book`: a name and a JSON text per row, see core/lifecycle.py). `load_book()`
gives the rows found at open; `save_book()` takes changed rows (None: delete) and wakes the
committer, which writes them at once, in one transaction with whatever records are pending, so
an acknowledgement is on disk within milliseconds, not at the next interval. The spool keeps the
whole table in memory as well, so a file moved aside for corruption gets the book back in full
on the fresh one.

Text records. A record of a kind in TEXT_KINDS (`line`: one InfluxDB line, which `hullwatch
bridge` makes once from each message) has bytes for a body, its own stored text: the file keeps
them as they are and `read` gives them back as they are, with no JSON on the way.

Records that cannot be stored. `append` encodes each body once; a record whose body JSON cannot
hold or whose time is outside SQLite's INTEGER nanoseconds (years 1677..2262) never joins the
batch: it is counted (`unstorable`) and kept in the `rejected` table (sink `spool`) at the next
commit, so no record can make a commit fail for ever. Likewise a record a sink fails on in a way
it does not call an outage (an exception other than SinkUnavailable): the forwarder sends the
records one at a time, and one that fails alone while a later one goes through is set aside as
rejected with the error, so it never blocks the records behind it.

Statistics come from running counters and one index seek (`stats()`), never from a scan, so
the service can ask every few seconds whatever the depth.
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKLOG_MIN = 500  # records waiting when a sink returns: above this, live data gets its own lane
LIVE_BATCH = 500
REPLAY_CHUNK = 2000
IDLE_WAIT_S = 0.5
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 15.0
MAX_PENDING = 100_000  # records held in memory when the file cannot be written (about 37 MB)
UNSTORABLE_KEPT, UNSTORABLE_BYTES = 1000, 2000  # unstorable records kept in `rejected` a run, and their size
CONFIRM_TIMEOUT_S = 10.0  # a pipelining sink that confirms nothing handed over for this long has failed
TEXT_KINDS = frozenset({"line"})  # kinds whose body is its own text (bytes, stored as is), not a JSON object
ISOLATE_BATCH = 50  # records read after an unexpected send failure, to tell a poison record from an outage
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # the primary result codes of a damaged file

SCHEMA = """
CREATE TABLE IF NOT EXISTS record (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, time_ns INTEGER NOT NULL,
                                   body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (sink TEXT PRIMARY KEY, done INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (id INTEGER NOT NULL, sink TEXT NOT NULL, kind TEXT NOT NULL, time_ns INTEGER,
                                     body BLOB NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alarm_book (name TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled record: what it is, when it happened (ns since the epoch), and its JSON object (bytes for a
    kind in TEXT_KINDS)."""

    id: int
    kind: str
    time_ns: int
    body: dict | bytes
    text: str | bytes | None = field(default=None, compare=False, repr=False)  # as stored, made once at append


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
    `live_interval_s` (least time between live sends, default 0): InfluxDB gathers a second of
    records per HTTP request.

    Optional pipelining (MQTT): `window` (most live records handed over and not yet confirmed)
    and the methods `submit(records, replay, wake) -> int` (hand records over in order without
    waiting; how many leading ones it took; SinkUnavailable if none), `confirmed() -> list[int]`
    (ids of submitted records the far end has taken since the last call, in any order; `wake()`
    was called, from any thread, when there were new ones) and `forget()` (drop what was submitted
    and not confirmed: it goes again). The forwarder's thread alone calls these three.
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


def _json(body: dict) -> str:
    """A body as the file keeps it (append makes this once; a record made elsewhere may come without)."""
    return json.dumps(body, separators=(",", ":"))


def _json_text(b: str | bytes) -> str | None:
    """A JSON body as read from the file, kept as the record's text (None if not a str)."""
    return b if isinstance(b, str) else None


def _readable(r: Record) -> str:
    """A record's body as text for the `rejected` table (a person reads it)."""
    if isinstance(r.body, bytes):
        return r.body.decode("utf-8", "replace")
    return json.dumps(r.body)


def is_corrupt(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (SQLITE_CORRUPT or SQLITE_NOTADB), not busy or full."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


class _Gate:
    """Many users of the file at once, or one recovery alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._users:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Spool:
    """The SQLite store-and-forward log. Thread-safe; `start()` runs the committer and the forwarders.

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
        self._lock_path = os.path.realpath(path) + ".lock"  # one lock per file, whatever symlink led to it
        self._lock_file = open(self._lock_path, "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SpoolInUse(f"{path} is in use by another hullwatch") from None
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        self._sinks: list[str] = []
        self._generation = 0  # bumped whenever every connection was closed (a recovery): readers reconnect
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards the in-memory state below; never held across disk I/O
        self._appended = threading.Condition(self._lock)
        self._batches = 0  # batches open (`batch`): appends wake the forwarders when the last one ends
        self._pending: list[Record] = []  # appended, not yet being committed
        self._committing: list[Record] = []  # being written right now: still readable from memory
        self.cursors: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.problem: str | None = None  # why the file cannot be written right now
        self.last_fault = ""  # the latest corrupt file moved aside, for people
        self.recoveries = 0  # corrupt files this spool moved aside
        self.unstorable = 0  # records refused at append since start (a time or a body the file cannot hold)
        self._unstorable: list[tuple] = []  # of them, rows for the `rejected` table at the next commit
        self._db: sqlite3.Connection | None = None  # the writer's connection, used under _write_lock
        self._loaded = False  # ids and counters came from the file (once; a recovery keeps them)
        self._next_id = 1
        self._first_id = 1  # the oldest record kept (file or memory)
        self._file_last_id = 0  # the newest id in the file
        self._book: dict[str, str] = {}  # the alarm book's table as it must be in the file
        self._book_dirty: set[str] = set()  # its rows not yet written
        self._book_unreadable: list[str] = []  # rows found at open that are not text
        self._wake = threading.Event()  # the committer's: the alarm book changed, write now
        try:
            self._open_or_recover()
        except BaseException:
            self._close_connections()
            self._lock_file.close()
            raise
        self._forwarders: dict[str, Forwarder] = {}
        self._stop = threading.Event()  # the committer's
        self._forward_stop = threading.Event()  # the current forwarders'
        self._committer: threading.Thread | None = None
        self._forwarder_threads: list[threading.Thread] = []
        self._closed = False
        self.commits = 0

    # -- the file ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        db.execute("PRAGMA synchronous=FULL")  # WAL + FULL: a commit survives a power cut once it returns
        return db

    def _open(self) -> None:
        """Open the file (made if missing) and load its cursors, counters and id range."""
        db = self._db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA journal_size_limit=8388608")
        db.executescript(SCHEMA)
        first, last = db.execute("SELECT min(id), max(id) FROM record").fetchone()
        cursors = dict(db.execute("SELECT sink, done FROM cursor").fetchall())
        counters = dict(db.execute("SELECT name, value FROM counter").fetchall())
        try:
            book = db.execute("SELECT name, body FROM alarm_book").fetchall()
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                raise
            # a table of another shape (not ours): the book starts afresh, the spool opens all the same
            log.warning("spool: %s: the alarm book's table cannot be read (%s); starting it afresh", self.path, exc)
            db.execute("DROP TABLE IF EXISTS alarm_book")
            db.executescript(SCHEMA)
            book = []
        with self._lock:
            if not self._loaded:  # the book as the previous run left it
                for name, body in book:
                    if isinstance(name, str) and isinstance(body, str):
                        self._book[name] = body
                    else:
                        self._book_unreadable.append(str(name))
                        self._book_dirty.add(str(name))  # deleted at the first commit
            else:  # a fresh file after a recovery: the whole book goes to it
                self._book_dirty.update(self._book)
            for sink, done in cursors.items():  # after a recovery the ones in memory are newer
                self.cursors[sink] = max(done, self.cursors.get(sink, 0))
            for name, value in counters.items():
                self.counters[name] = max(value, self.counters.get(name, 0))
            if not self._loaded:  # ids never go back, even on an empty file
                self._next_id = max([last or 0, *self.cursors.values()]) + 1
                self._first_id = first if first is not None else self._next_id
                self._loaded = True
            self._file_last_id = last or 0

    def _open_or_recover(self) -> None:
        """Open the file; a corrupt one is moved aside first and a fresh one opened instead."""
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._close_connections()
            self._move_aside(exc)
            self._open()

    def _move_aside(self, exc: BaseException) -> None:
        """Rename the corrupt file and its WAL to `<path>.corrupt-<time>`, count it, say so."""
        aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        n = 1
        while os.path.exists(aside):
            n += 1
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{n}"
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path + suffix, aside + suffix)
        with self._lock:
            lost = max(0, self._file_last_id - self._floor()) if self._loaded else 0
            self._count("corrupt", 1)
            self.recoveries += 1
            self._first_id = min([r.id for r in self._committing + self._pending] or [self._next_id])
        self.last_fault = f"corrupt file ({exc}) moved aside to {aside}; a fresh spool started"
        if lost:
            self.last_fault += f"; {lost} unsent record(s) stay in the old file"
        log.error("spool: %s: %s", self.path, self.last_fault)

    def _recover(self, generation: int, exc: BaseException) -> None:
        """A query met corruption: with no other user of the file, move it aside and open a fresh one."""
        with self._gate.exclusive():
            if generation != self._generation:
                return  # another thread recovered already
            self._close_connections()
            try:
                self._move_aside(exc)
                self._open()
            except (OSError, sqlite3.Error) as err:
                self._close_connections()
                self.problem = f"corrupt and cannot be replaced ({err}); records wait in memory"
                log.error("spool: %s: %s", self.path, self.problem)

    def _close_connections(self) -> None:
        """Close the writer's and every reader's connection (nobody may be using them)."""
        with self._lock:
            readers, self._reader_connections = self._reader_connections, []
        for db in [*readers, self._db]:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        self._db = None
        self._generation += 1

    def _on_disk(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn on the file under the gate; on corruption recover once and run it again."""
        for attempt in (1, 2):
            generation = self._generation
            try:
                with self._gate.shared():
                    if self._db is None:
                        raise sqlite3.OperationalError(self.problem or "the spool file is not open")
                    return fn(*args)
            except sqlite3.DatabaseError as exc:
                if attempt == 2 or not is_corrupt(exc):
                    raise
                self._recover(generation, exc)
        raise AssertionError("unreachable")

    def _reopen(self) -> None:
        """After a recovery that could not open a fresh file: try again (the committer, each interval)."""
        with self._gate.exclusive():
            if self._db is None and not self._closed:
                try:
                    self._open_or_recover()
                except (OSError, sqlite3.Error):
                    self._close_connections()
                    raise
                log.info("spool: %s open again", self.path)

    def _reader(self) -> sqlite3.Connection:
        """This thread's own read connection (call under the gate)."""
        local = self._readers
        if getattr(local, "generation", None) != self._generation:
            local.db = self._connect()
            local.generation = self._generation
            with self._lock:
                self._reader_connections.append(local.db)
        return local.db

    def release_reader(self) -> None:
        """Close this thread's read connection (a thread that ends calls this)."""
        local = self._readers
        db = getattr(local, "db", None)
        if db is None:
            return
        with self._gate.shared(), self._lock:
            if db in self._reader_connections:
                self._reader_connections.remove(db)
                db.close()
        local.db = local.generation = None

    # -- writing --------------------------------------------------------------------------------

    def append(self, kind: str, t: float, body: dict | bytes) -> int:
        """Spool one record (in memory until the next commit); its id (0 if it cannot be stored: set aside).

        The body is a JSON object, or for a kind in TEXT_KINDS its text as bytes (stored as is).
        """
        return self.extend(kind, ((t, body),))[0]

    def extend(self, kind: str, items: Iterable[tuple[float, dict | bytes]]) -> list[int]:
        """Spool records of one kind, (time, body) each, taking the lock once; their ids (0: set aside, as `append`)."""
        text_kind = kind in TEXT_KINDS
        ready: list[tuple[int, dict | bytes, str | bytes] | None] = []
        for t, body in items:
            try:
                if text_kind:
                    if not isinstance(body, bytes) or not body:
                        raise TypeError(f"a {kind} record's body must be non-empty bytes, not {type(body).__name__}")
                    text = body
                else:
                    text = json.dumps(body, separators=(",", ":"))
                t_ns = time_ns(t)
                if not -(2**63) <= t_ns < 2**63:  # SQLite's INTEGER: years 1677..2262
                    raise OverflowError(f"time {t!r} is outside the years 1677..2262")
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._set_aside_unstorable(kind, t, body, exc)
                ready.append(None)
                continue
            ready.append((t_ns, body, text))
        ids = []
        with self._lock:
            first = rid = self._next_id
            for item in ready:
                if item is None:
                    ids.append(0)
                    continue
                self._pending.append(Record(rid, kind, *item))
                ids.append(rid)
                rid += 1
            self._next_id = rid
            if len(self._pending) > MAX_PENDING:
                gone = len(self._pending) - MAX_PENDING
                del self._pending[:gone]
                self._count("dropped", gone)
                if not self._committing and self._file_last_id < self._first_id:  # nothing older kept
                    self._first_id = self._pending[0].id
            if rid != first and not self._batches:
                self._appended.notify_all()
        return ids

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Append several records with one wake-up of the forwarders, at the end, instead of one each."""
        with self._lock:
            self._batches += 1
            first = self._next_id
        try:
            yield
        finally:
            with self._lock:
                self._batches -= 1
                if not self._batches and self._next_id != first:
                    self._appended.notify_all()

    def load_book(self) -> tuple[dict[str, str], list[str]]:
        """The alarm book's rows found when the file was opened (name -> JSON text), and names of unreadable rows."""
        with self._lock:
            return dict(self._book), list(self._book_unreadable)

    def save_book(self, rows: Mapping[str, str | None]) -> None:
        """Changed rows of the alarm book (None: delete the row), written by the committer at once."""
        if not rows:
            return
        with self._lock:
            for name, body in rows.items():
                if body is None:
                    self._book.pop(name, None)
                else:
                    self._book[name] = body
                self._book_dirty.add(name)
        self._wake.set()

    def _set_aside_unstorable(self, kind: str, t: Any, body: Any, exc: BaseException) -> None:
        """A record the file cannot hold (a time out of range, a body JSON cannot hold): counted, and kept
        (up to UNSTORABLE_KEPT a run) for the `rejected` table at the next commit; it never reaches a
        transaction, so it can never stop one."""
        reason = f"cannot be stored: {type(exc).__name__}: {exc}"[:300]
        with self._lock:
            self._count("unstorable", 1)
            self.unstorable += 1
            if len(self._unstorable) < UNSTORABLE_KEPT:
                try:
                    text = json.dumps(body, default=repr)[:UNSTORABLE_BYTES]
                except (TypeError, ValueError, OverflowError, RecursionError):
                    text = repr(body)[:UNSTORABLE_BYTES]
                try:
                    t_ns = time_ns(t) if -(2**63) <= time_ns(t) < 2**63 else None
                except (TypeError, ValueError, OverflowError):
                    t_ns = None
                self._unstorable.append((0, "spool", str(kind), t_ns, text, reason, time.time()))
            first = self.unstorable == 1
        if first or self.unstorable % 1000 == 0:  # the first, then every thousandth: never a flood of lines
            log.error("spool: %d record(s) that cannot be stored set aside so far; the latest %s", self.unstorable,
                      reason)  # fmt: skip

    def commit(self) -> None:
        """Write what was appended, save the cursors, delete what every sink has, keep the budget."""
        if self._db is None:
            self._reopen()
        committed_id, dropped = self._on_disk(self._commit)
        if dropped:
            self.on_dropped(dropped)
        if self.on_commit is not None:
            self.on_commit(committed_id)

    def _commit(self) -> tuple[int, int]:
        with self._write_lock:
            db = self._db
            with self._lock:
                batch = self._committing = self._pending
                self._pending = []
                committed_id = self._next_id - 1
                cursors = list(self.cursors.items())
                counters = list(self.counters.items())
                floor = min((self.cursors.get(s, 0) for s in self._sinks), default=None)
                book_names, self._book_dirty = self._book_dirty, set()
                book_rows = [(n, self._book[n]) for n in book_names if n in self._book]
                book_gone = [(n,) for n in book_names if n not in self._book]
                unstorable, self._unstorable = self._unstorable, []
            try:  # whatever fails, the transaction is rolled back and the batch kept for the next try
                rows = [(r.id, r.kind, r.time_ns, r.text if r.text is not None else _json(r.body)) for r in batch]
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO alarm_book VALUES (?, ?)", book_rows)
                db.executemany("DELETE FROM alarm_book WHERE name = ?", book_gone)
                db.executemany("INSERT OR REPLACE INTO record (id, kind, time_ns, body) VALUES (?, ?, ?, ?)", rows)
                db.executemany("INSERT INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)", unstorable)
                db.executemany("INSERT OR REPLACE INTO cursor VALUES (?, ?)", cursors)
                db.executemany("INSERT OR REPLACE INTO counter VALUES (?, ?)", counters)
                if floor is not None:
                    db.execute("DELETE FROM record WHERE id <= ?", (floor,))
                db.execute("COMMIT")
            except Exception:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                with self._lock:
                    self._pending = batch + self._pending  # keep them for the next try
                    self._committing = []
                    self._book_dirty |= book_names
                    self._unstorable = unstorable + self._unstorable
                raise
            with self._lock:
                self._committing = []
                self.commits += 1
                if batch:
                    self._file_last_id = max(self._file_last_id, batch[-1].id)
                if floor is not None:
                    self._first_id = max(self._first_id, floor + 1)
            return committed_id, self._enforce_budget()

    def _enforce_budget(self) -> int:
        """Delete the oldest records while the used pages exceed the budget; how many went."""
        used = (self._pragma("page_count") - self._pragma("freelist_count")) * self._pragma("page_size")
        if used <= self.max_bytes:
            return 0
        first = self._db.execute("SELECT min(id) FROM record").fetchone()[0]  # an index seek, not a scan
        if first is None:
            return 0
        count = max(1, self._file_last_id - first + 1)  # ids are consecutive in the file
        excess = used - int(self.max_bytes * 0.9)  # make room for a while, not one record at a time
        n = min(count, max(1, int(count * excess / used) + 1))
        self._db.execute("DELETE FROM record WHERE id < ?", (first + n,))
        with self._lock:
            self._count("dropped", n)
            self._first_id = max(self._first_id, first + n)
            dropped = self.counters["dropped"]
        self._db.execute("INSERT OR REPLACE INTO counter VALUES ('dropped', ?)", (dropped,))
        log.warning("spool: over its budget of %.0f MB, dropped the %d oldest records", self.max_bytes / 2**20, n)
        return n

    def _pragma(self, name: str, db: sqlite3.Connection | None = None) -> int:
        return (db or self._db).execute(f"PRAGMA {name}").fetchone()[0]

    def _count(self, name: str, n: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _floor(self) -> int:
        """Every id at or below this is done for every sink (call with _lock held)."""
        return min((self.cursors.get(s, 0) for s in self._sinks), default=self._next_id - 1)

    def reject(self, sink: str, records: Iterable[Record], reasons: dict[int, str], quiet: bool = False) -> None:
        """Set records a sink refused aside (kept for a person to look at, never sent again); quiet: the caller logs."""
        rows = [
            (r.id, sink, r.kind, r.time_ns, _readable(r), reasons[r.id], time.time())
            for r in records
            if r.id in reasons
        ]
        if not rows:
            return

        def insert() -> None:
            with self._write_lock:
                self._db.executemany("INSERT INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

        self._on_disk(insert)
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
        if self._closed:
            return []

        def select() -> list[tuple]:
            sql = "SELECT id, kind, time_ns, body FROM record WHERE id > ? AND id <= ? ORDER BY id LIMIT ?"
            return self._reader().execute(sql, (after, hi, limit)).fetchall()

        rows = self._on_disk(select)
        out = [
            Record(i, k, t, b, b) if k in TEXT_KINDS else Record(i, k, t, json.loads(b), _json_text(b))
            for i, k, t, b in rows
        ]
        if len(out) < limit:
            start = out[-1].id if out else after
            out += [r for r in memory if start < r.id <= hi][: limit - len(out)]
        return out

    def sent(self, sink: str) -> int:
        """How many records a sink has confirmed since the daemon started."""
        forwarder = self._forwarders.get(sink)
        return forwarder.sent if forwarder else 0

    def forwarder(self, sink: str) -> Forwarder | None:
        """The running forwarder of a sink, if any."""
        return self._forwarders.get(sink)

    @property
    def last_id(self) -> int:
        """The id of the newest record appended."""
        return self._next_id - 1

    def wait_for_append(self, after: int, timeout_s: float, woken: Callable[[], bool] | None = None) -> None:
        """Block until a record newer than `after` exists, `woken()` is true (see `wake`), or the timeout."""
        with self._lock:
            if self._next_id - 1 <= after and not (woken is not None and woken()):
                self._appended.wait(timeout_s)

    def wake(self) -> None:
        """Wake the threads in `wait_for_append` (they look at their `woken` again)."""
        with self._lock:
            self._appended.notify_all()

    def set_cursor(self, sink: str, done: int) -> None:
        """A sink has every record up to `done` (saved with the next commit)."""
        with self._lock:
            if done > self.cursors.get(sink, 0):
                self.cursors[sink] = done

    def stats(self) -> dict[str, Any]:
        """Depth (records some sink still needs), the oldest such record's age, sizes and counters.

        From running counters and one index seek: cheap whatever the depth.
        """
        memory = self._in_memory()
        with self._lock:
            floor = self._floor()
            last = self._next_id - 1
            depth = max(0, last - max(floor, self._first_id - 1))
            backlog = {f"backlog.{s}": max(0, last - self.cursors.get(s, 0)) for s in self._sinks}
            dropped = self.counters.get("dropped", 0)
            corrupt = self.counters.get("corrupt", 0)
            unstorable = self.counters.get("unstorable", 0)

        def look() -> tuple[int | None, int]:
            db = self._reader()
            row = db.execute("SELECT time_ns FROM record WHERE id > ? ORDER BY id LIMIT 1", (floor,)).fetchone()
            return (row[0] if row else None), self._pragma("page_count", db) * self._pragma("page_size", db)

        oldest, size = None, 0
        if not self._closed:
            with contextlib.suppress(sqlite3.Error):
                oldest, size = self._on_disk(look)
        if oldest is None:  # nothing unsent in the file: the oldest unsent is in memory, if any
            oldest = next((r.time_ns for r in memory if r.id > floor), None)
        return {
            "depth": depth,
            "oldest_unsent_s": 0.0 if oldest is None or not depth else max(0.0, time.time() - oldest / 1e9),
            "size_bytes": size,
            "dropped": dropped,
            "corrupt": corrupt,
            "unstorable": unstorable,
            "commits": self.commits,
            **backlog,
        }

    def configure(self, max_mb: float, commit_interval_s: float, replay_per_s: float) -> None:
        """New budget and pacing (a reload that keeps the same file)."""
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.commit_interval_s = commit_interval_s
        self.replay_per_s = replay_per_s

    # -- threads --------------------------------------------------------------------------------

    def start(self, sinks: Sequence[SpoolSink]) -> None:
        """Run the committer (if not yet running) and one forwarder per sink."""
        with self._lock:
            self._sinks = [s.name for s in sinks]
            for s in sinks:
                self.cursors.setdefault(s.name, 0)
        self._forward_stop = threading.Event()
        self._forwarders = {s.name: Forwarder(self, s, self._forward_stop) for s in sinks}
        self._forwarder_threads = [
            threading.Thread(target=f.run, name=f"spool-{name}", daemon=True) for name, f in self._forwarders.items()
        ]
        for t in self._forwarder_threads:
            t.start()
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_loop, name="spool-commit", daemon=True)
            self._committer.start()

    def stop_forwarding(self, timeout_s: float = 2.0) -> None:
        """Stop the forwarders (waiting up to timeout_s in all); the committer goes on."""
        self._forward_stop.set()
        with self._lock:
            self._appended.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._forwarder_threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._forwarder_threads if t.is_alive()]
        if stuck:
            log.warning("spool: %s still busy; its unconfirmed records go again next time", ", ".join(stuck))
        self._forwarder_threads = []

    def _commit_loop(self) -> None:
        """Commit every interval; while the file cannot be written, retry with backoff (up to RETRY_MAX_S)."""
        delay = self.commit_interval_s
        while True:
            # the alarm book wakes it early, except while the file cannot be written (then: backoff)
            (self._stop if self.problem is not None else self._wake).wait(delay)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.commit()
                if self.problem is not None:
                    log.info("spool: writing %s again", self.path)
                self.problem = None
                delay = self.commit_interval_s
                continue
            except sqlite3.Error as exc:
                if self.problem is None:
                    log.error("spool: cannot write %s: %s (holding records in memory)", self.path, exc)
                self.problem = f"cannot write {self.path}: {exc}"
            except Exception as exc:
                if self.problem is None:
                    log.exception("spool: commit failed")
                self.problem = f"commit failed: {type(exc).__name__}: {exc}"
            delay = min(RETRY_MAX_S, max(delay, self.commit_interval_s) * 2)

    def close(self, drain_s: float = 0.0, timeout_s: float = 5.0) -> None:
        """Give the forwarders up to `drain_s` to catch up, stop the threads (up to timeout_s), commit, close."""
        end = time.monotonic() + drain_s
        with contextlib.suppress(sqlite3.Error):
            while time.monotonic() < end and self.stats()["depth"] > 0:
                time.sleep(0.05)
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self.stop_forwarding(timeout_s)
        if self._committer is not None:
            self._committer.join(max(0.0, deadline - time.monotonic()))
        try:
            self.commit()
        except sqlite3.Error as exc:
            log.error("spool: final commit failed: %s (%d record(s) not saved)", exc, len(self._in_memory()))
        self._closed = True
        with self._gate.exclusive():
            self._close_connections()
        self._lock_file.close()
        if self.temporary:
            for name in (self.path, self.path + "-wal", self.path + "-shm", self._lock_path):
                with contextlib.suppress(OSError):
                    os.unlink(name)


class InFlight:
    """A pipelining sink's live records handed over and not yet confirmed; confirmations come in any order.

    Every id at or below `frontier` is done: confirmed, or of a kind the sink does not take.
    """

    def __init__(self, after: int) -> None:
        self.sent = after  # the newest id handed over (or passed over: a kind the sink does not take)
        self._waiting: dict[int, float] = {}  # id -> monotonic time handed over, oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def handed(self, ids: Iterable[int], upto: int) -> None:
        """Records handed over, and every id up to `upto` passed."""
        now = time.monotonic()
        for rid in ids:
            self._waiting[rid] = now
        self.sent = max(self.sent, upto)

    def confirm(self, rid: int) -> bool:
        """One record confirmed; False if it was not waiting (already confirmed, or of an earlier round)."""
        return self._waiting.pop(rid, None) is not None

    @property
    def frontier(self) -> int:
        return next(iter(self._waiting)) - 1 if self._waiting else self.sent

    def oldest_wait_s(self) -> float:
        """How long the oldest unconfirmed record has waited (0 if none)."""
        return time.monotonic() - next(iter(self._waiting.values())) if self._waiting else 0.0


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
        self.pipelined = callable(getattr(sink, "submit", None))
        self.window = max(1, int(getattr(sink, "window", 1)))
        self.inflight = InFlight(self.live_done)
        self._woken = False  # the sink has confirmations for us (set from its thread)
        self.sent = 0
        self._suspect = False  # a send failed unexpectedly: read more records, to isolate a poison one
        self.down_since: float | None = None  # monotonic time the sink became unavailable; None while it works
        self.last_error = ""  # why, for people

    def run(self) -> None:
        """The forwarder thread: never raises."""
        try:
            self._split_if_backlog()
            while not self.stop.is_set():
                try:
                    busy = self.step()
                except SinkUnavailable as exc:
                    self._fail(str(exc))
                    continue
                except Exception as exc:  # a bug or a spool error: logged once per episode, retried with backoff
                    if not self._down_logged:
                        log.exception("spool: forwarding to %s failed", self.sink.name)
                    self._fail(f"internal error: {type(exc).__name__}: {exc}")
                    continue
                if not busy:
                    self._idle()
        finally:
            with contextlib.suppress(Exception):
                self.spool.release_reader()

    def _idle(self) -> None:
        """Wait for new records (pipelining: with room in the window) or confirmations, at most IDLE_WAIT_S."""
        if self.pipelined:
            full = len(self.inflight) >= self.window
            after = self.spool.last_id if full else self.inflight.sent
            self.spool.wait_for_append(after, IDLE_WAIT_S, woken=lambda: self._woken)
            return
        delay = self._next_live - time.monotonic()
        if delay > 0:
            self.stop.wait(delay)
        else:
            self.spool.wait_for_append(self.live_done, IDLE_WAIT_S)

    def _wake(self) -> None:
        """The sink has confirmations (called from its thread)."""
        self._woken = True
        self.spool.wake()

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
        if self.pipelined:
            busy = self._pipeline()
        elif time.monotonic() >= self._next_live:
            live = self.spool.read(self.live_done, max(self.live_batch, ISOLATE_BATCH if self._suspect else 0))
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
        if busy:  # something went through: the sink works (an idle round proves nothing)
            self.down_since = None
        if self._down_logged and busy:
            self._down_logged = False
            self._retry_s = RETRY_FIRST_S
            log.info("spool: %s is back; %d record(s) to catch up", self.sink.name, self.spool.last_id - self.done)
        return busy

    def _pipeline(self) -> bool:
        """The live lane of a pipelining sink: take its confirmations, hand over what is new up to the window."""
        flight = self.inflight
        self._woken = False
        confirmed = sum(flight.confirm(rid) for rid in self.sink.confirmed())
        self.sent += confirmed
        if flight.oldest_wait_s() > CONFIRM_TIMEOUT_S:
            raise SinkUnavailable(f"nothing confirmed for {CONFIRM_TIMEOUT_S:g} s")
        room = self.window - len(flight)
        live = self.spool.read(flight.sent, room) if room > 0 else []
        if live:
            wanted = [r for r in live if r.kind in self.sink.kinds]
            if not wanted:
                flight.handed((), live[-1].id)
            else:
                try:
                    taken = self.sink.submit(wanted, False, self._wake)
                except SinkUnavailable:
                    raise
                except Exception:  # not an outage by the sink's word: the records one by one, to isolate a bad one
                    flight.handed((), self._deliver(live, replay=False))
                else:
                    upto = live[-1].id if taken >= len(wanted) else wanted[taken].id - 1
                    flight.handed((r.id for r in wanted[:taken]), upto)
        self.live_done = flight.frontier
        return bool(live or confirmed)

    def _restart_live(self, at: int) -> None:
        """The live lane starts again after `at`: what was handed over past it and not confirmed goes again."""
        self.live_done = at
        if self.pipelined:
            self.inflight = InFlight(at)
            self.sink.forget()

    def _deliver(self, records: list[Record], replay: bool) -> int:
        """Send what the sink takes; the id up to which everything is handled."""
        wanted = [r for r in records if r.kind in self.sink.kinds]
        if not wanted:
            return records[-1].id
        try:
            result = self.sink.send(wanted, replay)
            self._suspect = False
        except SinkUnavailable:
            raise
        except Exception as exc:  # not an outage by the sink's own word: perhaps a record it can never send
            self._suspect = True
            result = self._isolate(wanted, replay, exc)
        if result.rejected:
            self.spool.reject(self.sink.name, wanted, result.rejected)
        self.sent += result.confirmed - len(result.rejected)
        if result.confirmed < len(wanted):  # the rest stays for the next round
            return wanted[result.confirmed].id - 1 if result.confirmed else records[0].id - 1
        return records[-1].id

    def _isolate(self, records: list[Record], replay: bool, failure: Exception) -> SendResult:
        """After an unexpected failure: send the records one at a time. One that fails alone, when a later
        one then goes through, is one the sink can never send: set aside with its reason (as a sink's own
        refusals are). If none goes through, the failure stands (an outage: retried with backoff)."""
        confirmed, rejected, suspects = 0, {}, {}
        for i, r in enumerate(records[:ISOLATE_BATCH]):
            try:
                one = self.sink.send([r], replay)
            except SinkUnavailable:
                break
            except Exception as exc:
                suspects[r.id] = f"cannot be sent: {type(exc).__name__}: {exc}"[:300]
                continue
            if one.confirmed < 1:
                break
            rejected |= suspects | one.rejected
            suspects = {}
            confirmed = i + 1
        if not confirmed:
            raise failure
        self._suspect = bool(suspects)
        return SendResult(confirmed, rejected)

    def _split_if_backlog(self) -> None:
        waiting = self.spool.last_id - self.done
        if waiting > BACKLOG_MIN:
            self.mark = self.spool.last_id
            log.debug("spool: %d record(s) of backlog for %s; live data goes first", waiting, self.sink.name)
        else:
            self.mark = self.done
        self._restart_live(self.mark)

    def _allowance(self) -> int:
        """How many backlog records may go now (a token bucket of replay_per_s, holding at least one record)."""
        now = time.monotonic()
        rate = self.spool.replay_per_s
        self._budget = min(max(rate, 1.0), self._budget + (now - self._budget_at) * rate)
        self._budget_at = now
        n = int(min(self._budget, REPLAY_CHUNK))
        self._budget -= n
        return n

    def _fail(self, reason: str, wait: bool = True) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.last_error = reason
        if not self._down_logged:  # once per outage, not once per retry
            log.warning("spool: %s unavailable (%s); keeping records", self.sink.name, reason)
            self._down_logged = True
        self._failing = True
        self.mark = self.done  # what the live lane confirmed past `done` goes again
        self._restart_live(self.done)
        if wait:
            self.stop.wait(self._retry_s)
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
