"""The store-and-forward spool: records, cursors, budget, forwarding, power cuts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import daemon_rig
from hullwatch.sinks.spool import LIVE_BATCH, Forwarder, Record, SendResult, SinkUnavailable, Spool, SpoolInUse


class FakeSink:
    """A sink under the test's control: up or down, recording what it was sent."""

    def __init__(self, name: str = "fake", kinds: frozenset[str] = frozenset({"sample"})) -> None:
        self.name = name
        self.kinds = kinds
        self.up = True
        self.poison: set[int] = set()  # values it rejects
        self.got: list[tuple[int, bool]] = []  # (value, replay)
        self.lock = threading.Lock()

    def ready(self) -> bool:
        return True

    def send(self, records, replay):
        if not self.up:
            raise SinkUnavailable("down")
        rejected = {r.id: "poison" for r in records if r.body["v"] in self.poison}
        with self.lock:
            self.got += [(r.body["v"], replay) for r in records if r.id not in rejected]
        return SendResult(len(records), rejected)

    def values(self) -> list[int]:
        with self.lock:
            return [v for v, _ in self.got]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_records_are_readable_before_and_after_commit(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"))
    ids = [spool.append("sample", 1000.0 + i, {"v": i}) for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert [r.body["v"] for r in spool.read(0, 10)] == [0, 1, 2, 3, 4]
    spool.commit()
    spool.append("sample", 1005.0, {"v": 5})
    got = spool.read(2, 10)
    assert [r.id for r in got] == [3, 4, 5, 6]
    assert got[0] == Record(3, "sample", 1002_000_000_000, {"v": 2})
    assert [r.id for r in spool.read(2, 2)] == [3, 4]
    assert [r.id for r in spool.read(0, 10, upto=3)] == [1, 2, 3]
    spool.close()


def test_cursors_survive_reopen_and_confirmed_records_go(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool = Spool(path)
    spool._sinks = ["a", "b"]
    for i in range(10):
        spool.append("sample", float(i), {"v": i})
    spool.set_cursor("a", 7)
    spool.set_cursor("b", 4)
    spool.commit()
    assert spool.stats()["depth"] == 6  # records 5..10 are still needed by b
    spool.close()
    spool = Spool(path)
    assert spool.cursors == {"a": 7, "b": 4}
    assert [r.id for r in spool.read(0, 100)] == [5, 6, 7, 8, 9, 10]
    spool._sinks = ["a", "b"]
    spool.set_cursor("b", 10)
    spool.set_cursor("a", 10)
    spool.commit()
    spool.close()
    spool = Spool(path)
    assert spool.read(0, 100) == []
    assert spool.append("sample", 11.0, {"v": 11}) == 11, "ids never go back, even when the file is empty"
    spool.close()


def test_a_second_process_cannot_share_the_file(tmp_path):
    path = str(tmp_path / "s.sqlite")
    first = Spool(path)
    with pytest.raises(SpoolInUse):
        Spool(path)
    first.close()
    Spool(path).close()


def test_budget_drops_the_oldest_and_counts_them(tmp_path):
    dropped = []
    spool = Spool(str(tmp_path / "s.sqlite"), max_mb=0.25, on_dropped=dropped.append)
    spool._sinks = ["never"]
    body = {"v": 0, "pad": "x" * 200}
    for batch in range(20):
        for i in range(500):
            spool.append("sample", float(batch * 500 + i), dict(body, v=batch * 500 + i))
        spool.commit()
    stats = spool.stats()
    assert sum(dropped) == stats["dropped"] > 0
    ids = [r.id for r in spool.read(0, 100_000)]
    assert ids == list(range(ids[0], 10_001)), "the oldest went, the newest stay, in order"
    used = spool._pragma("page_count") - spool._pragma("freelist_count")
    assert used * spool._pragma("page_size") <= 0.25 * 2**20 * 1.05
    spool.close()


def test_forwarder_holds_records_while_the_sink_is_down_then_replays_them_marked(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.1, replay_per_s=2000)
    sink = FakeSink()
    sink.up = False
    spool.start([sink])
    for i in range(4000):
        spool.append("sample", float(i), {"v": i})
        spool.append("other", float(i), {"v": -1})  # a kind this sink does not take
    time.sleep(0.5)
    assert sink.got == []
    sink.up = True
    assert wait_until(lambda: sink.got, 5), "the forwarder retries by itself"
    for i in range(4000, 4010):  # live data while the backlog drains at 2000 records/s
        spool.append("sample", float(i), {"v": i})
    assert wait_until(lambda: 4009 in sink.values(), 1.0), "live data does not wait behind the backlog"
    assert len(sink.values()) < 4010, "the backlog was still draining"
    assert wait_until(lambda: len(sink.values()) >= 4010, 20)
    assert sorted(set(sink.values())) == list(range(4010)), "nothing lost"
    assert {v for v, replay in sink.got if replay} == set(range(4000)), "the backlog went out marked as replay"
    assert not any(replay for v, replay in sink.got if v >= 4000), "live records are not marked"
    assert wait_until(lambda: spool.stats()["depth"] == 0, 5)
    spool.close()


def test_poison_records_are_set_aside_and_never_block(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool = Spool(path, commit_interval_s=0.1)
    sink = FakeSink()
    sink.poison = {3}
    spool.start([sink])
    for i in range(6):
        spool.append("sample", float(i), {"v": i})
    assert wait_until(lambda: len(sink.values()) == 5)
    assert sink.values() == [0, 1, 2, 4, 5]
    assert wait_until(lambda: spool.counters.get("rejected.fake") == 1)
    spool.close()
    rows = sqlite3.connect(path).execute("SELECT id, sink, reason FROM rejected").fetchall()
    assert rows == [(4, "fake", "poison")]


def test_a_sink_down_does_not_hold_back_another(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.1)
    up, down = FakeSink("up"), FakeSink("down")
    down.up = False
    spool.start([up, down])
    for i in range(50):
        spool.append("sample", float(i), {"v": i})
    assert wait_until(lambda: len(up.values()) == 50)
    time.sleep(0.3)
    assert spool.stats()["depth"] == 50, "kept for the sink that is down"
    down.up = True
    assert wait_until(lambda: len(down.values()) == 50, 20)
    assert wait_until(lambda: spool.stats()["depth"] == 0, 5)
    spool.close()


STORM = textwrap.dedent(
    """
    import sys, time
    from hullwatch.sinks.spool import Spool
    spool = Spool(sys.argv[1], commit_interval_s=0.2)
    spool.start([])
    i = 0
    while True:
        spool.append("sample", time.time(), {"v": i, "pad": "x" * 100})
        i += 1
        if i % 50 == 0:
            print(i, flush=True)
            time.sleep(0.001)
    """
)


def test_kill_9_during_a_commit_storm_never_corrupts_and_loses_at_most_the_last_interval(tmp_path):
    path = str(tmp_path / "s.sqlite")
    for k in range(5):
        proc = subprocess.Popen([sys.executable, "-c", STORM, path], stdout=subprocess.PIPE, text=True)
        appended_before_kill = 0
        while appended_before_kill < 20_000:  # running, and past its first commits
            appended_before_kill = int(proc.stdout.readline())
        time.sleep(0.1 + 0.2 * k)
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:
            appended_before_kill = int(line)
        proc.wait()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT body FROM record ORDER BY id").fetchall()
        db.close()
        assert rows, "commits happened"
        # this run's records: the v counter restarted at 0; the last committed one is within ~0.2 s of the kill
        last_v = max(int(b.split('"v":')[1].split(",")[0]) for (b,) in rows[-200:])
        assert appended_before_kill - last_v < 20_000
    spool = Spool(path)  # reopens cleanly after the last cut
    assert spool.read(0, 1)
    spool.close()


def test_a_symlink_to_the_spool_takes_the_same_lock(tmp_path):
    """Two daemons on one spool, one through a symlink, would overwrite each other's records."""
    real = tmp_path / "data" / "spool.sqlite"
    first = Spool(str(real))
    link = tmp_path / "spool-link.sqlite"
    link.symlink_to(real)
    linked_dir = tmp_path / "state"
    linked_dir.symlink_to(tmp_path / "data", target_is_directory=True)
    for other in (link, linked_dir / "spool.sqlite"):
        with pytest.raises(SpoolInUse):
            Spool(str(other))
    first.close()
    Spool(str(link)).close()  # free again once the first one is closed


def test_replay_slower_than_one_record_a_second_earns_whole_records():
    """The token bucket holds at least one record: at 0.5/s one record goes every 2 s (it used to cap at 0.5)."""
    spool = Spool(None, replay_per_s=0.5)
    try:
        forwarder = Forwarder(spool, FakeSink(), threading.Event())
        sent = 0
        for _ in range(50):
            forwarder._budget_at -= 2.0  # two seconds pass
            sent += forwarder._allowance()
        assert 49 <= sent <= 51
        forwarder._budget_at -= 3600.0  # an hour idle earns a burst of one record, not 1800
        assert forwarder._allowance() == 1
    finally:
        spool.close()


def test_a_backlog_drains_at_a_replay_rate_below_one(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.1, replay_per_s=0.8)
    sink = FakeSink()
    sink.up = False
    spool.start([sink])
    try:
        for i in range(600):  # more than BACKLOG_MIN: the forwarder splits it off as a replay
            spool.append("sample", float(i), {"v": i})
        assert wait_until(lambda: spool.stats()["depth"] == 600 and spool._forwarders["fake"]._failing, 10)
        sink.up = True
        started = time.monotonic()
        assert wait_until(lambda: sum(replay for _, replay in sink.got) >= 2, 30), "the backlog moves"
        replayed = sum(replay for _, replay in sink.got)
        assert replayed <= 1 + 0.8 * (time.monotonic() - started) + 1, "at about the configured rate, not faster"
    finally:
        spool.close()


# -- faults: corrupt files, cheap statistics, handover, bounded stop ------------------------------------------------


def spool_with_backlog(path: str, n: int = 5000) -> None:
    """A spool file holding n committed records that sink `x` still needs."""
    spool = Spool(path)
    spool._sinks = ["x"]
    for i in range(n):
        spool.append("sample", float(i), {"v": i, "pad": "y" * 100})
    spool.commit()
    spool.close()


def garbage(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(os.urandom(size))


def zeroed_header(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)


def truncated(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def bad_middle_page(path: str) -> None:
    """Garbage in the cells of a leaf page half way: the file opens, a query that reads that page fails."""
    page = os.path.getsize(path) // 4096 // 2
    with open(path, "r+b") as f:
        f.seek(page * 4096 + 2000)
        f.write(b"\xff" * 1500)


@pytest.mark.parametrize("damage", [garbage, zeroed_header, truncated])
def test_a_corrupt_file_at_start_is_moved_aside_and_a_fresh_one_started(tmp_path, damage, caplog):
    path = str(tmp_path / "s.sqlite")
    spool_with_backlog(path)
    damage(path)
    spool = Spool(path)
    aside = [p for p in os.listdir(tmp_path) if ".corrupt-" in p and not p.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].startswith("s.sqlite.corrupt-")
    assert spool.recoveries == 1 and spool.counters["corrupt"] == 1
    assert "moved aside" in spool.last_fault and "moved aside" in caplog.text
    sink = FakeSink(kinds=frozenset({"sample"}))
    spool.start([sink])
    spool.append("sample", 1.0, {"v": 42})
    assert wait_until(lambda: sink.values() == [42]), "the fresh spool forwards"
    spool.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT value FROM counter WHERE name = 'corrupt'").fetchone() == (1,)
    db.close()


def test_corruption_met_while_forwarding_is_moved_aside_and_forwarding_goes_on(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool_with_backlog(path)
    bad_middle_page(path)
    spool = Spool(path, commit_interval_s=0.1)
    assert spool.recoveries == 0, "the damage does not show at open"
    sink = FakeSink("x")
    spool.start([sink])
    assert wait_until(lambda: spool.recoveries == 1), "the forwarder met the bad page"
    assert spool.stats()["depth"] >= 0  # statistics keep working
    for i in range(100):
        spool.append("sample", 10_000.0 + i, {"v": 10_000 + i})
    assert wait_until(lambda: set(range(10_000, 10_100)) <= set(sink.values())), "new records still go out"
    spool.close()
    assert any(".corrupt-" in p for p in os.listdir(tmp_path))


def test_stats_come_from_counters_and_match_the_file(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), max_mb=0.25)
    spool._sinks = ["a", "b"]

    def truth() -> int:
        floor = min(spool.cursors.get(s, 0) for s in spool._sinks)
        in_file = spool._reader().execute("SELECT count(*) FROM record WHERE id > ?", (floor,)).fetchone()[0]
        return in_file + len([r for r in spool._in_memory() if r.id > floor and r.id > spool._file_last_id])

    for round_ in range(12):
        for i in range(400):
            spool.append("sample", time.time() - 5, {"v": i, "pad": "z" * 200})
        if round_ % 2:
            spool.commit()
        spool.set_cursor("a", spool.last_id - 100)
        spool.set_cursor("b", spool.last_id - 1500 * (round_ % 3))
        assert spool.stats()["depth"] == truth(), f"round {round_}"
    stats = spool.stats()
    assert stats["dropped"] > 0, "the budget dropped records along the way"
    assert 4 < stats["oldest_unsent_s"] < 60
    spool.commit()
    assert spool.stats()["depth"] == truth()
    spool.close()


def test_forwarders_hand_over_to_new_sinks_with_the_cursors(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.1)
    old = FakeSink("x")
    spool.start([old])
    for i in range(50):
        spool.append("sample", float(i), {"v": i})
    assert wait_until(lambda: len(old.values()) == 50)
    spool.stop_forwarding(2.0)
    for i in range(50, 80):
        spool.append("sample", float(i), {"v": i})
    new = FakeSink("x")
    spool.start([new])
    assert wait_until(lambda: len(new.values()) >= 30)
    assert new.values() == list(range(50, 80)), "the new sink starts where the old one stopped"
    spool.close()


class StuckSink(FakeSink):
    """A sink whose send never returns (a frozen server)."""

    def send(self, records, replay):
        threading.Event().wait(60)
        return SendResult(0)


def test_close_is_bounded_even_with_a_stuck_sink(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool = Spool(path, commit_interval_s=0.1)
    spool.start([StuckSink("stuck")])
    for i in range(10):
        spool.append("sample", float(i), {"v": i})
    time.sleep(0.3)
    started = time.monotonic()
    spool.close(drain_s=0.5, timeout_s=1.0)
    assert time.monotonic() - started < 5.0
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM record").fetchone()[0] == 10, "committed for next time"
    db.close()


def test_a_full_disk_holds_records_in_memory_says_so_and_catches_up(tmp_path):
    with daemon_rig.small_disk(tmp_path, kib=256) as disk:
        spool = Spool(str(disk.path / "s.sqlite"), commit_interval_s=0.05)
        sink = FakeSink()
        sink.up = False
        spool.start([sink])
        n = 0
        while spool.problem is None and n < 50_000:
            for _ in range(200):
                spool.append("sample", float(n), {"v": n, "pad": "p" * 200})
                n += 1
            time.sleep(0.02)
        assert spool.problem is not None and "full" in spool.problem
        disk.resize(16 * 1024)
        assert wait_until(lambda: spool.problem is None, 40), "commits again once there is room (with backoff)"
        sink.up = True
        assert wait_until(lambda: len(sink.values()) == n, 30), "nothing lost"
        assert sorted(sink.values()) == list(range(n))
        spool.close()


# -- the alarm book's table ------------------------------------------------------------------------------------------


def book_rows(path: str) -> dict[str, str] | None:
    """The alarm_book table as another process reads it (read-only); None while there is none (a file moving)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return None
    try:
        return dict(db.execute("SELECT name, body FROM alarm_book").fetchall())
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def test_the_alarm_book_is_written_at_once_and_read_back_at_open(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool = Spool(path, commit_interval_s=60.0)  # records wait a minute; the book does not
    spool.start([])
    spool.save_book({"alarm/a": '{"state":"acked"}', "maintenance": '{"v":1}'})
    assert wait_until(lambda: book_rows(path) == {"alarm/a": '{"state":"acked"}', "maintenance": '{"v":1}'})
    spool.save_book({"maintenance": None, "alarm/b": "{}"})
    assert wait_until(lambda: book_rows(path) == {"alarm/a": '{"state":"acked"}', "alarm/b": "{}"})
    spool.close()
    again = Spool(path)
    assert again.load_book() == ({"alarm/a": '{"state":"acked"}', "alarm/b": "{}"}, [])
    again.close()


def test_an_unreadable_book_row_is_reported_and_deleted(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Spool(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO alarm_book VALUES (?, ?)", ("alarm/bad", b"\xff\x00"))
    db.execute("INSERT INTO alarm_book VALUES (?, ?)", ("alarm/good", "{}"))
    db.commit()
    db.close()
    spool = Spool(path)
    assert spool.load_book() == ({"alarm/good": "{}"}, ["alarm/bad"])
    spool.close()
    assert book_rows(path) == {"alarm/good": "{}"}


def test_an_alarm_book_table_of_another_shape_starts_afresh(tmp_path, caplog):
    path = str(tmp_path / "s.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE alarm_book (key TEXT, state TEXT)")
    db.commit()
    db.close()
    spool = Spool(path)
    assert spool.load_book() == ({}, []) and "starting it afresh" in caplog.text
    spool.save_book({"alarm/a": "{}"})
    spool.close()
    assert book_rows(path) == {"alarm/a": "{}"}


def test_the_alarm_book_moves_to_the_fresh_file_when_the_old_one_is_corrupt(tmp_path):
    path = str(tmp_path / "s.sqlite")
    spool_with_backlog(path)
    bad_middle_page(path)
    spool = Spool(path, commit_interval_s=0.1)
    spool.save_book({"alarm/a": '{"state":"latched_unack"}'})
    spool.commit()
    sink = FakeSink("x")
    spool.start([sink])
    assert wait_until(lambda: spool.recoveries == 1), "the forwarder met the bad page"
    assert wait_until(lambda: book_rows(path) == {"alarm/a": '{"state":"latched_unack"}'}), "the book is back"
    spool.close()


def test_a_record_that_cannot_be_stored_is_set_aside_and_never_stops_a_commit(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"))
    spool._sinks = ["fake"]
    try:
        spool.append("sample", 1000.0, {"v": 0})
        assert spool.append("sample", 1e12, {"v": 1}) == 0  # a time in ms: year 33658, over SQLite's INTEGER
        assert spool.append("sample", float("nan"), {"v": 2}) == 0
        assert spool.append("sample", 1001.0, {"v": object()}) == 0  # no JSON for it
        spool.append("sample", 1002.0, {"v": 3})
        spool.commit()
        spool.append("sample", 1003.0, {"v": 4})
        spool.commit()
        assert [r.body["v"] for r in spool.read(0, 10)] == [0, 3, 4]
        assert spool.counters["unstorable"] == 3 and spool.stats()["unstorable"] == 3
    finally:
        spool.close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    kept = db.execute("SELECT sink, time_ns, reason FROM rejected ORDER BY rowid").fetchall()
    assert [(sink, t) for sink, t, _ in kept] == [("spool", None), ("spool", None), ("spool", 1001_000_000_000)]
    assert "years 1677..2262" in kept[0][2] and "TypeError" in kept[2][2]
    assert db.execute("SELECT value FROM counter WHERE name = 'unstorable'").fetchone() == (3,)


class FailingSink(FakeSink):
    """A sink that raises an unexpected error on some records (a bug, a body it cannot encode), or on all."""

    def __init__(self, live_batch: int = LIVE_BATCH) -> None:
        super().__init__()
        self.live_batch = live_batch
        self.broken = False  # fails on everything (not an outage by its own word)

    def send(self, records, replay):
        if self.broken or any(r.body["v"] in self.poison for r in records):
            raise KeyError("sensor")
        return super().send(records, replay)


@pytest.mark.parametrize("live_batch", [1, LIVE_BATCH], ids=["one at a time", "batches"])
def test_a_record_a_sink_fails_on_is_set_aside_and_never_blocks_the_rest(tmp_path, live_batch):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.05)
    sink = FailingSink(live_batch)
    sink.poison = {3}
    spool.start([sink])
    try:
        for i in range(4):  # the poison record is the newest for a while: nothing tells it from an outage yet
            spool.append("sample", 1000.0 + i, {"v": i})
        assert wait_until(lambda: sink.values() == [0, 1, 2])
        time.sleep(0.3)
        assert spool.counters.get("rejected.fake", 0) == 0, "nothing went through after it: not set aside yet"
        for i in range(4, 10):
            spool.append("sample", 1000.0 + i, {"v": i})
        assert wait_until(lambda: sink.values() == [0, 1, 2, 4, 5, 6, 7, 8, 9], timeout=30), sink.values()
        assert wait_until(lambda: spool.counters.get("rejected.fake") == 1)  # counted just after the send
    finally:
        spool.close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("SELECT sink, reason FROM rejected").fetchall() == [
        ("fake", "cannot be sent: KeyError: 'sensor'")
    ]


def test_a_sink_that_fails_on_everything_sets_nothing_aside(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.05)
    sink = FailingSink()
    sink.broken = True
    spool.start([sink])
    try:
        for i in range(20):
            spool.append("sample", 1000.0 + i, {"v": i})
        assert wait_until(lambda: spool.forwarder("fake").down_since is not None)
        time.sleep(1.5)
        assert spool.counters.get("rejected.fake", 0) == 0
        sink.broken = False  # fixed: everything goes, nothing was lost
        assert wait_until(lambda: sink.values() == list(range(20)), timeout=30), sink.values()
    finally:
        spool.close()


class PipeSink(FakeSink):
    """A pipelining sink: takes records without a wait, confirms them when the test says, in any order.

    Like MQTT's message ids, a confirmation belongs to the round its record was handed over in: one of
    a round the forwarder gave up (`forget`) is not taken for the same record handed over again.
    """

    window = 4

    def __init__(self) -> None:
        super().__init__("pipe")
        self.connected = True
        self.handed: list[int] = []  # record ids, in the order they were handed over (again after a failure)
        self.forgets = 0
        self._round = 0
        self._taken: dict[int, int] = {}  # record id -> the round it was handed over in, not yet confirmed
        self._acks: list[tuple[int, int | None]] = []
        self._wake = None

    def ready(self) -> bool:
        return self.connected

    def submit(self, records, replay, wake):
        if not self.connected:
            raise SinkUnavailable("down")
        with self.lock:
            self._wake = wake
            self.handed += [r.id for r in records]
            self._taken |= {r.id: self._round for r in records}
        return len(records)

    def ack(self, *ids: int) -> None:
        """PUBACKs arrive (from another thread, as paho's)."""
        with self.lock:
            self._acks += [(i, self._taken.get(i)) for i in ids]
            wake = self._wake
        wake()

    def confirmed(self):
        with self.lock:
            out = [i for i, r in self._acks if r == self._round and self._taken.get(i) == r]
            for i in out:
                del self._taken[i]
            self._acks = []
        return out

    def forget(self) -> None:
        with self.lock:
            self.forgets += 1
            self._round += 1
            self._taken.clear()
            self._acks = []

    def handed_now(self) -> list[int]:
        with self.lock:
            return list(self.handed)


def test_a_pipelining_sink_gets_a_window_and_confirmations_in_any_order_move_the_cursor_to_the_first_gap(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.05)
    sink = PipeSink()
    spool.start([sink])
    try:
        for i in range(7):
            spool.append("sample", 1000.0 + i, {"v": i})
            spool.append("other", 1000.0 + i, {"v": -1})  # ids 2, 4, ...: a kind the sink does not take
        assert wait_until(lambda: sink.handed_now() == [1, 3, 5, 7]), "a window of 4, no wait for confirmations"
        sink.ack(7, 5)  # the later two first
        assert wait_until(lambda: sink.handed_now() == [1, 3, 5, 7, 9, 11]), "their room goes to the next ones"
        assert spool.cursors["pipe"] == 0, "record 1 is not confirmed: nothing is done yet"
        sink.ack(1)
        assert wait_until(lambda: spool.cursors["pipe"] == 2), "done up to the next unconfirmed (3)"
        sink.ack(3, 11, 9)
        assert wait_until(lambda: sink.handed_now()[-1] == 13)
        assert wait_until(lambda: spool.cursors["pipe"] == 12)
        sink.ack(13)
        assert wait_until(lambda: spool.cursors["pipe"] == 14)
        assert spool.sent("pipe") == 7
        assert wait_until(lambda: spool.stats()["depth"] == 0)
    finally:
        spool.close()


def test_what_a_pipelining_sink_had_not_confirmed_goes_again_after_a_failure(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.05)
    sink = PipeSink()
    spool.start([sink])
    try:
        for i in range(6):
            spool.append("sample", 1000.0 + i, {"v": i})
        assert wait_until(lambda: sink.handed_now() == [1, 2, 3, 4])
        sink.ack(1, 3)
        assert wait_until(lambda: sink.handed_now() == [1, 2, 3, 4, 5, 6])
        assert wait_until(lambda: spool.cursors["pipe"] == 1)
        forgets = sink.forgets
        sink.connected = False  # the connection drops with 2, 4, 5 and 6 unconfirmed
        assert wait_until(lambda: sink.forgets > forgets), "the forwarder saw it"
        sink.ack(4)  # a PUBACK of the lost round, after the drop: not taken for the next round's
        sink.connected = True
        assert wait_until(lambda: sink.handed_now()[6:] == [2, 3, 4, 5]), "again from the first unconfirmed one"
        sink.ack(2, 3, 4, 5)
        assert wait_until(lambda: sink.handed_now()[-1] == 6)
        sink.ack(6)
        assert wait_until(lambda: spool.cursors["pipe"] == 6)
    finally:
        spool.close()


def test_a_pipelining_sink_that_confirms_nothing_for_a_while_has_failed(tmp_path, monkeypatch):
    monkeypatch.setattr("hullwatch.sinks.spool.CONFIRM_TIMEOUT_S", 0.5)
    monkeypatch.setattr("hullwatch.sinks.spool.RETRY_FIRST_S", 0.1)
    spool = Spool(str(tmp_path / "s.sqlite"), commit_interval_s=0.05)
    sink = PipeSink()
    spool.start([sink])
    try:
        spool.append("sample", 1000.0, {"v": 0})
        assert wait_until(lambda: sink.handed_now() == [1])
        assert wait_until(lambda: sink.handed_now() == [1, 1]), "handed over again"
        assert "nothing confirmed" in spool.forwarder("pipe").last_error
        sink.ack(1)
        assert wait_until(lambda: spool.cursors["pipe"] == 1)
    finally:
        spool.close()


def test_records_appended_in_a_batch_wake_the_forwarders_once_at_its_end(tmp_path):
    spool = Spool(str(tmp_path / "spool.db"))
    woke = threading.Event()
    before = spool.last_id

    def forwarder() -> None:
        spool.wait_for_append(before, 60.0)
        woke.set()

    try:
        with spool.batch():
            waiter = threading.Thread(target=forwarder, daemon=True)
            waiter.start()
            for i in range(3):
                spool.append("sample", 1.0 + i, {"sensor": "p", "value": i})
            assert not woke.wait(0.3)  # still waiting: the batch is open
        assert woke.wait(30.0)
        assert [r.body["value"] for r in spool.read(0, 10)] == [0, 1, 2]
    finally:
        spool.close()


def test_a_line_record_is_its_own_text_in_memory_in_the_file_and_after_reopening(tmp_path):
    """A `line` record's bytes go to the file and come back as they are; JSON records beside it are unchanged."""
    path = str(tmp_path / "s.sqlite")
    line = b'sensor,quantity=pressure,sensor=p1,station=a quality="good",value=101325 1780000000000000000'
    spool = Spool(path)
    try:
        assert spool.append("line", 1000.0, line) == 1
        spool.append("sample", 1001.0, {"v": 1})
        assert spool.read(0, 10) == [Record(1, "line", 1000_000_000_000, line), Record(2, "sample", 1001_000_000_000,
                                                                                      {"v": 1})]  # fmt: skip
        spool.commit()
        assert spool.read(0, 10)[0].body == line  # from the file now
    finally:
        spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT body FROM record ORDER BY id").fetchall() == [(line,), ('{"v":1}',)]
    spool = Spool(path)
    try:
        first, second = spool.read(0, 10)
        assert (first.kind, first.body, first.text) == ("line", line, line)
        assert second.body == {"v": 1}
        spool.reject("influxdb", [first], {1: "refused"})
    finally:
        spool.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT body, reason FROM rejected").fetchall() == [(line.decode(), "refused")]


def test_a_line_record_that_is_not_bytes_is_set_aside_and_never_stops_a_commit(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"))
    try:
        assert spool.append("line", 1000.0, "text, not bytes") == 0
        assert spool.append("line", 1000.0, b"") == 0
        assert spool.append("line", 1e12, b"m f=1 1") == 0  # a time over SQLite's INTEGER
        assert spool.append("sample", 1000.0, b"bytes for a JSON kind") == 0
        assert spool.append("line", 1001.0, b"m f=1 1") == 1
        spool.commit()
        assert [r.body for r in spool.read(0, 10)] == [b"m f=1 1"]
        assert spool.counters["unstorable"] == 4
    finally:
        spool.close()


def test_extend_spools_many_records_in_order_and_sets_aside_what_cannot_be_stored(tmp_path):
    spool = Spool(str(tmp_path / "s.sqlite"))
    try:
        spool.append("line", 999.0, b"m f=0 0")
        ids = spool.extend(
            "line", [(1000.0, b"m f=1 1"), (1e12, b"m f=2 2"), (1001.0, "not bytes"), (1002.0, b"m f=3 3")]
        )
        assert ids == [2, 0, 0, 3]
        assert spool.extend("line", []) == []
        assert [(r.id, r.body) for r in spool.read(0, 10)] == [(1, b"m f=0 0"), (2, b"m f=1 1"), (3, b"m f=3 3")]
        assert spool.counters["unstorable"] == 2 and spool.last_id == 3
    finally:
        spool.close()
