#!/usr/bin/env python3
"""Version 2: send the morning text from one long-running process, on the schedule library.

usage: run_schedule.py ZIP --at HH:MM [--tz ZONE] [--catch-up] [--country CC]
                       [--units imperial|metric] [--to NUMBER]... [--env-file PATH] [-q] [-v]

For machines without cron (a laptop, a container). Each day at --at in --tz (default: the
host's zone) it does what `weather_text.py ZIP` does, with the same settings, the same
once-a-day record and the same guarantees. A failing day is logged and the loop goes on.
`schedule` does not catch up on a missed time: with --catch-up, a process started after
today's time sends now when today's text has not gone out yet. SIGTERM or Ctrl-C ends it
(exit 0). Exit 2 or 78 at start for bad arguments or settings, as weather_text.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import FrameType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import schedule

import weather_text as wt

PROG = "run_schedule"
AT = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
MAX_SLEEP = 60.0  # seconds: wake up at least this often, so a changed clock is noticed

log = logging.getLogger(PROG)


def build_parser() -> argparse.ArgumentParser:
    parser = wt.UsageParser(
        prog="run_schedule.py",
        description="Send the morning text every day at a set time, without cron.",
    )
    parser.add_argument("zip", metavar="ZIP", help="zip code: 94103, 94103-1234, or E14,GB")
    parser.add_argument("--at", required=True, metavar="HH:MM", help="local time, 24-hour")
    parser.add_argument("--tz", metavar="ZONE", help="IANA time zone (default: the host's)")
    parser.add_argument(
        "--catch-up",
        action="store_true",
        help="if started after today's time and today's text has not gone out, send it now",
    )
    wt.add_run_options(parser)
    return parser


def check_schedule(at: str, tz: str | None) -> None:
    if not AT.match(at):
        raise wt.UsageError(f"--at {at!r} is not a time of day. Use HH:MM, like 07:00.")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise wt.UsageError(
                f"--tz {tz!r} is not a time zone. Use an IANA name, like America/Los_Angeles."
            ) from None


def morning_job(args: argparse.Namespace, environ: Mapping[str, str]) -> Callable[[], int]:
    """The daily job: weather_text's whole run; a failure is logged, never raised."""

    def job() -> int:
        try:
            config, location, units = wt.settings_from_args(args, environ, sending=True)
            code = wt.send_morning_text(config, location, units)
        except wt.WeatherTextError as exc:
            log.error("%s", exc)
            code = exc.exit_code
        except Exception as exc:  # the loop must outlive any one bad morning
            log.error("internal error (%s); the schedule goes on.", type(exc).__name__)
            code = wt.EX_SOFTWARE
        if code != wt.EX_OK:
            log.warning("today's run ended with exit code %d; the next run is tomorrow", code)
        return code

    return job


def schedule_daily(
    scheduler: schedule.Scheduler, at: str, tz: str | None, job: Callable[[], int]
) -> schedule.Job:
    entry: schedule.Job = scheduler.every().day.at(at, tz).do(job)
    return entry


def past_todays_time(at: str, tz: str | None, now: datetime | None = None) -> bool:
    """Is it already later than `at` today, on the clock of `tz` (or the host's)?"""
    zone = ZoneInfo(tz) if tz else None
    here = (now or datetime.now(zone)).astimezone(zone)
    hour, minute = map(int, at.split(":"))
    return (here.hour, here.minute) >= (hour, minute)


def next_run_text(entry: schedule.Job, tz: str | None) -> str:
    """When the job runs next, on the clock it was set by (schedule keeps host-local time)."""
    if entry.next_run is None:
        return "never"
    moment = entry.next_run.astimezone(ZoneInfo(tz) if tz else None)
    return moment.strftime("%Y-%m-%d %H:%M %Z")


def serve(scheduler: schedule.Scheduler, stop: threading.Event) -> None:
    """Run due jobs until `stop` is set, sleeping until the next one is due."""
    while not stop.is_set():
        scheduler.run_pending()
        idle = scheduler.idle_seconds
        stop.wait(max(0.0, min(MAX_SLEEP, idle if idle is not None else MAX_SLEEP)))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_schedule(args.at, args.tz)
    except wt.UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return wt.EX_USAGE
    wt.setup_logging(args.quiet, args.verbose, prog=PROG)
    try:  # bad settings fail now, not at 7am tomorrow
        wt.settings_from_args(args, environ, sending=True)
    except wt.WeatherTextError as exc:
        log.error("%s", exc)
        return exc.exit_code

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set a flag: a handler that logs can land inside a write to stderr and
        # hang on the reentrant call (seen under load). The loop logs for it.
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    scheduler = schedule.Scheduler()
    job = morning_job(args, environ)
    entry = schedule_daily(scheduler, args.at, args.tz, job)
    log.info(
        "texting %s daily at %s %s; next text at %s",
        args.zip,
        args.at,
        args.tz or "host time",
        next_run_text(entry, args.tz),
    )
    if args.catch_up and past_todays_time(args.at, args.tz):
        log.info("--catch-up: sending today's text now unless it went out already")
        job()
    serve(scheduler, stop)
    log.info("got %s: stopped", signal.Signals(received[0]).name if received else "a stop")
    return wt.EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
