"""The `hullwatch` command: one function per subcommand (ICD §1)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from hullwatch import __version__, config, present, progress
from hullwatch.core import alarm_kinds
from hullwatch.core.model import AlarmState, AlarmTransition, Estimate, Notice
from hullwatch.core.monitor import Monitor
from hullwatch.exits import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_OK,
    EX_SOFTWARE,
    EX_USAGE,
    load_config,
)
from hullwatch.samples import SamplesError, read_samples


class _Parser(argparse.ArgumentParser):
    """argparse that exits with EX_USAGE instead of 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EX_USAGE)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config as `run` would build it (nothing taken or started) and summarise what it describes."""
    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    from hullwatch import service

    try:  # what `run` builds first, checked the same way; nothing is taken or started
        prepared = service.prepare(cfg, for_run=False)
    except service.BuildError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    prepared.close()
    m = cfg.module
    a = m.alarms
    out = [f"{cfg.path}: OK — station {cfg.station!r}"]
    out.append("segments: " + ", ".join(f"{s.name} ({s.volume_m3:g} m³)" for s in m.segments))
    if m.hatches:
        out.append(
            "hatches: "
            + ", ".join(
                f"{h.name} ({h.between[0]}↔{h.between[1]}, initially {'open' if h.initially_open else 'closed'})"
                for h in m.hatches
            )
        )
    out.append("volumes now: " + ", ".join(cfg.volumes()))
    out.append("sensors: " + ", ".join(f"{s.name} ({s.driver}, in {s.spec.segment})" for s in cfg.sensors))
    out += [kind.render(kind.check_text, a, m.leak, lambda x, _unit: _fmt(x)) for kind in alarm_kinds.KINDS]
    outputs = [
        name
        for name, on in (
            ("recorder", cfg.recorder),
            ("mqtt", cfg.mqtt),
            ("influxdb", cfg.influxdb),
            ("annunciator", cfg.annunciator),
        )
        if on
    ]
    out.append("outputs: " + (", ".join(outputs) if outputs else "none (log only)"))
    out += [f"note: {line}" for line in prepared.notes]
    print("\n".join(out))
    return EX_OK


def _fmt(x: float | None) -> str:
    return "off" if x is None else f"{x:g}"


def cmd_analyze(args: argparse.Namespace) -> int:
    """Feed a samples file through the core; write estimates and alarm transitions as JSON Lines."""
    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    if not os.path.isfile(args.samples):
        print(f"{args.samples}: samples file not found", file=sys.stderr)
        return EX_NOINPUT
    if args.output and os.path.exists(args.output) and os.path.samefile(args.output, args.samples):
        print(f"{args.output}: is the samples file itself: writing there would destroy it", file=sys.stderr)
        return EX_USAGE
    monitor = Monitor(cfg.module)
    counts = {"estimates": 0, "activations": 0}
    target = args.output or "<stdout>"
    try:
        with ExitStack() as stack:
            with _writing(target):
                out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
            if args.output:  # closed quietly: the flush at the end has reported any write error already
                stack.callback(_close_quietly, out)

            def write(text: str) -> None:
                with _writing(target):
                    out.write(text)

            latest: dict[str, Estimate] = {}
            stream, position = stack.enter_context(progress.open_positioned(args.samples))
            bar = stack.enter_context(progress.Progress(f"analyze {args.samples}", progress.file_size(args.samples)))
            bar.enabled &= out is not sys.stdout or not sys.stdout.isatty()  # not across text on the same screen
            rows = 0
            for rows, sample in enumerate(read_samples(args.samples, cfg.sample_names(), stream), 1):
                if not rows & 0xFFF:
                    bar.update(position(), rows)
                for event in monitor.feed(sample):
                    if isinstance(event, Notice):
                        print(present.describe(event), file=sys.stderr)
                        continue
                    if isinstance(event, Estimate):
                        counts["estimates"] += 1
                        if args.summary:
                            latest[event.volume] = event
                            continue
                    elif isinstance(event, AlarmTransition) and event.state is AlarmState.ACTIVE:
                        counts["activations"] += 1
                    write(present.describe(event) + "\n" if args.summary else json.dumps(event.to_dict()) + "\n")
            bar.update(position(), rows)
            if args.summary:
                write(_final_state(monitor, latest))
            with _writing(target):
                out.flush()
    except SamplesError as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    except _CannotWrite as exc:
        print(exc, file=sys.stderr)
        return EX_CANTCREAT
    except BrokenPipeError:  # stdout closed early (`| head`): main() ends quietly
        raise
    except OSError as exc:
        print(f"{exc.filename or args.samples}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    if args.output:
        print(
            f"{counts['estimates']} estimates and {counts['activations']} alarm activations written to {args.output}",
            file=sys.stderr,
        )
    return EX_OK


def _close_quietly(f: Any) -> None:
    with contextlib.suppress(OSError):
        f.close()


class _CannotWrite(Exception):
    """The output of a command cannot be written (the message names it)."""


@contextlib.contextmanager
def _writing(target: str) -> Iterator[None]:
    """An OSError while opening or writing `target` (a full disk, a directory) becomes _CannotWrite."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _CannotWrite(f"{target}: cannot write: {exc.strerror or exc}") from None


def _final_state(monitor: Monitor, latest: dict[str, Estimate]) -> str:
    """The closing lines of `analyze --summary`: each volume's last estimate and the active alarms."""
    lines = ["at the end of the recording:"]
    lines += [f"  {present.estimate_text(latest[vid])}" for vid in monitor.volumes if vid in latest]
    k = monitor.k
    for vid, limits in monitor.detection_limits().items():
        figures = ", ".join(f"{present.window(w)} {v:.2g}" for w, v in limits.items())
        lines.append(f"  {vid}: smallest leak confirmed at {k:g} sigma, kg/day: in {figures}")
    active = ", ".join(f"{sev.label} {alarm} {source}" for alarm, source, sev in monitor.active_alarms())
    lines.append(f"  active alarms: {active or 'none'}")
    return "\n".join(lines) + "\n"


def _setup_logging(verbose: bool) -> None:
    """Log plain messages to the journal under systemd, else timestamped lines to stderr.

    Under systemd: with structured fields through systemd-python when installed, else as
    `<priority>message` lines on the journal stream (stderr). The level is never part of the text there.
    """
    from hullwatch.systemd import journal_handler, journal_stream_formatter, under_systemd

    handler = journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        formatter = journal_stream_formatter(sys.stderr)
        if formatter is None:
            stamp = "" if under_systemd() else "%(asctime)s "
            formatter = logging.Formatter(stamp + "%(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("hullwatch").info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_run(args: argparse.Namespace) -> int:
    """The monitor, in the foreground, until SIGTERM or SIGINT; SIGHUP reloads the configuration.

    Everything is built before anything runs; a start that cannot be built prints one line per
    problem and exits 78 (configuration) or 69 (a service or device unavailable). A reload builds the
    new daemon while the old one runs, and keeps the old one if the new one cannot be built.
    """
    from hullwatch import service
    from hullwatch.systemd import Notifier

    cfg = load_config(args.config)
    if isinstance(cfg, int):
        return cfg
    _setup_logging(args.verbose)
    log = logging.getLogger("hullwatch")
    stop = _stop_on_signals()
    hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda _s, _f: hup.set())
    try:
        daemon: service.Daemon | None = service.build(cfg)
    except service.BuildError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    notifier = Notifier()
    if notifier.enabled:
        ping = f", WATCHDOG=1 every {notifier.watchdog_s:g} s while samples arrive" if notifier.watchdog_s else ""
        log.info("systemd: notifying through %s%s", notifier.backend, ping)

    def reload(old: service.Daemon) -> service.Daemon | None:
        """On SIGHUP: the daemon of the configuration now in the file, or None to keep the old one."""
        if not hup.is_set():
            return None
        hup.clear()
        notifier.reloading()
        try:
            new = service.rebuild(old, cfg.path)
        except service.BuildError as exc:
            old.reload_refused(exc.problems)
            notifier.ready(old.status())
            return None
        log.info("configuration reloaded from %s", cfg.path)
        return new

    while daemon is not None:
        daemon = daemon.run(stop, notifier, reload)
    notifier.stopping()
    return EX_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """The simulated mock-up's transducers on pseudo-terminals; prints a config for `hullwatch run`."""
    from hullwatch.sim import ptys, scenario

    try:
        sc = scenario.load(args.scenario)
    except FileNotFoundError:
        print(f"{args.scenario}: scenario file not found", file=sys.stderr)
        return EX_NOINPUT
    except OSError as exc:
        print(f"{args.scenario}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    except scenario.ScenarioError as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    from hullwatch.sensors.presets import PRESETS

    unknown = [t.preset for t in sc.transducers if t.preset not in PRESETS]
    if unknown:
        print(f"{args.scenario}: unknown preset(s) {', '.join(unknown)} (known: {', '.join(PRESETS)})", file=sys.stderr)
        return EX_DATAERR
    if args.link_dir:
        os.makedirs(args.link_dir, exist_ok=True)
    ports = [ptys.PtyTransducer(t.name, t.preset, args.link_dir) for t in sc.transducers]
    text = ptys.station_config(sc, ports, args.speed)
    if args.config_out:
        with open(args.config_out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"configuration for `hullwatch run` written to {args.config_out}", file=sys.stderr)
    else:
        print(text, flush=True)
    print(f"simulating {sc.name} at {args.speed:g}x on {len(ports)} pty(s); Ctrl-C to stop", file=sys.stderr)
    stop = _stop_on_signals()
    try:
        ptys.serve(sc, ports, args.speed, args.seed, stop)
    finally:
        for p in ports:
            p.close()
    return EX_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole monitor on a simulated mock-up: no hardware needed."""
    from hullwatch import demo

    return demo.run(speed=args.speed)


def cmd_report(args: argparse.Namespace) -> int:
    """A pressure-decay test report (PNG, PDF, Markdown) from a samples file."""
    from hullwatch import report

    return report.run(args)


def cmd_watch(args: argparse.Namespace) -> int:
    """A live terminal view of a station, over MQTT."""
    from hullwatch import watch

    return watch.run(args)


def cmd_bridge(args: argparse.Namespace) -> int:
    """Stations' telemetry from a broker into InfluxDB, until SIGTERM/SIGINT."""
    from hullwatch import bridge

    cfg = load_config(args.config, config.load_bridge)
    if isinstance(cfg, int):
        return cfg
    _setup_logging(args.verbose)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from hullwatch.sinks.mqtt import MqttSetupError

    try:
        bridge.run(cfg, stop)
    except MqttSetupError as exc:
        print(f"{cfg.path}: {exc}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def _speed(text: str) -> float:
    """A --speed: a positive, finite factor."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = _Parser(prog="hullwatch", description="Pressure-integrity monitor for spacecraft-module mock-ups.")
    p.add_argument("--version", action="version", version=f"hullwatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def config_arg(sp: argparse.ArgumentParser, required: bool = False) -> None:
        sp.add_argument(
            "-c",
            "--config",
            metavar="PATH",
            required=required,
            help=f"configuration file (default: $HULLWATCH_CONFIG, else {config.DEFAULT_PATH})",
        )

    sp = sub.add_parser("run", help="the monitor, in the foreground, until SIGTERM/SIGINT")
    config_arg(sp)
    sp.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("simulate", help="the simulated mock-up's transducers on pseudo-terminals")
    sp.add_argument("--scenario", required=True, metavar="FILE", help="scenario file (config/scenarios/*.toml)")
    sp.add_argument("--speed", type=_speed, default=1.0, help="how many times faster than real time (default 1)")
    sp.add_argument("--seed", type=int, default=0, help="noise seed")
    sp.add_argument("--link-dir", metavar="DIR", help="also make DIR/<transducer> links to the ptys")
    sp.add_argument("--config-out", metavar="FILE", help="write the configuration here instead of stdout")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("demo", help="the monitor on a simulated PrK mock-up, no hardware needed")
    sp.add_argument("--speed", type=_speed, default=100.0, help="times faster than real time (default 100)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("check-config", help="validate a configuration and summarise it")
    config_arg(sp)
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("analyze", help="run a recorded samples file through the core, write JSON Lines")
    config_arg(sp, required=True)
    sp.add_argument("samples", metavar="SAMPLES.csv", help="samples file (ICD §3; .csv or .csv.gz)")
    sp.add_argument("-o", "--output", metavar="OUT.jsonl", help="write here instead of stdout")
    sp.add_argument(
        "--summary",
        action="store_true",
        help="for people: alarm transitions and hatch changes as text, then each volume's final state",
    )
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser("report", help="a pressure-decay test report (PNG, PDF, Markdown) from a samples file")
    config_arg(sp, required=True)
    sp.add_argument("samples", metavar="SAMPLES.csv", help="samples file (ICD §3; .csv or .csv.gz)")
    sp.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="directory for the report")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("bridge", help="stations' telemetry from an MQTT broker into InfluxDB (ground server)")
    config_arg(sp)
    sp.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sp.set_defaults(func=cmd_bridge)

    sp = sub.add_parser("watch", help="a live terminal view of a station over MQTT")
    config_arg(sp)
    sp.add_argument("--host", help="broker (default: [mqtt] host of the config, else localhost)")
    sp.add_argument("--port", type=int, help="broker port (default: the config's, else 1883)")
    sp.add_argument("--prefix", help="topic prefix of the station (default: the config's, e.g. hullwatch/<station>)")
    sp.add_argument("--username", help="MQTT user name (default: the config's)")
    sp.add_argument("--password-file", metavar="FILE", help="file holding the MQTT password")
    sp.set_defaults(func=cmd_watch)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): done, and nothing more to flush there
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except OSError as exc:  # an I/O error no command expected (stdout on a full disk ...)
        with contextlib.suppress(OSError):
            print(f"hullwatch {args.command}: I/O error: {_where(exc)}", file=sys.stderr)
        return EX_IOERR
    except Exception as exc:  # a bug: one line that says where, never a traceback (but in `run -v`'s debug log)
        logging.getLogger("hullwatch").debug("internal error", exc_info=True)
        print(f"hullwatch {args.command}: internal error: {_where(exc)}", file=sys.stderr)
        return EX_SOFTWARE


def _where(exc: BaseException) -> str:
    """`Type: message (at file.py:line in function)`, from the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    message = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {message}{at}"
