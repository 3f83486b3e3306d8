"""Version 3: the morning text on Celery beat and workers, with Redis.

    celery -A celery_app worker --beat --loglevel INFO    one box: a worker with beat inside
    celery -A celery_app beat --loglevel INFO             production: exactly one beat...
    celery -A celery_app worker --loglevel INFO           ...and any number of workers

At WEATHER_TEXT_AT in WEATHER_TEXT_TZ, beat queues `morning_run`, which queues one
`prepare_zip` per zip (the weather is fetched once per zip), which queues one `send_text`
per (zip, receiver). Temporary failures are retried with exponential backoff and jitter, a
bounded number of times; permanent refusals are not. Each (local date, zip, receiver) is
guarded in Redis with SET NX before sending, so a redelivered task, a second beat or a
worker crash under acks_late never sends a text twice; the guard is released when Twilio
did not take the text, so a retry can.

Settings, besides weather_text.py's (the environment, then secrets.sh beside it):
  CELERY_BROKER_URL           default redis://localhost:6379/0; the guards live there too
  WEATHER_TEXT_ZIPS           comma-separated zips; another country's as ZIP:CC (E14:GB)
  WEATHER_TEXT_AT             local time of the text, HH:MM, default 07:00
  WEATHER_TEXT_TZ             IANA zone of that time (Celery's timezone), default the host's
  WEATHER_TEXT_RETRY_BACKOFF  seconds before the first retry, doubling each time; default 60
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from celery import Celery, Task
from celery.schedules import crontab

import weather_text as wt

BROKER_URL = "redis://localhost:6379/0"
MAX_RETRIES = 5
BACKOFF_MAX = 3600.0  # seconds
GUARD_TTL = 36 * 3600  # seconds: longer than any local day, so a guard outlives its date
AT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

log = logging.getLogger("celery_app")
app = Celery("weather_text")


def host_zone() -> str:
    """The host's IANA zone name, as Debian records it; UTC when it cannot be told."""
    timezone_file = Path("/etc/timezone")
    if timezone_file.is_file():
        return timezone_file.read_text().strip() or "UTC"
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    return "UTC"


def configure(celery: Celery, env: Mapping[str, str]) -> None:
    """Broker, time zone and the beat entry from the environment."""
    at = env.get("WEATHER_TEXT_AT") or "07:00"
    match = AT.match(at)
    if not match:
        raise wt.ConfigError(f"WEATHER_TEXT_AT {at!r} is not a time of day. Use HH:MM.")
    zone = env.get("WEATHER_TEXT_TZ") or host_zone()
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise wt.ConfigError(
            f"WEATHER_TEXT_TZ {zone!r} is not a time zone. Use an IANA name, like "
            "America/Los_Angeles."
        ) from None
    celery.conf.update(
        broker_url=env.get("CELERY_BROKER_URL") or BROKER_URL,
        broker_connection_retry_on_startup=True,
        timezone=zone,
        enable_utc=True,
        # A task is acknowledged when it ends, so a worker that dies mid-task loses nothing;
        # the Redis guard keeps the redelivered copy from sending twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        beat_schedule={
            "morning-text": {
                "task": "celery_app.morning_run",
                "schedule": crontab(hour=int(match.group(1)), minute=int(match.group(2))),
            }
        },
    )


def zips(env: Mapping[str, str]) -> list[wt.Location]:
    entries = [e.strip() for e in env.get("WEATHER_TEXT_ZIPS", "").split(",") if e.strip()]
    if not entries:
        raise wt.ConfigError("missing WEATHER_TEXT_ZIPS. Set it to the zips to text, like 94103.")
    locations = []
    for entry in entries:
        zip_code, _, country = entry.partition(":")
        try:
            locations.append(wt.parse_location(zip_code, country or None))
        except wt.UsageError as exc:
            raise wt.ConfigError(f"WEATHER_TEXT_ZIPS: {exc}") from None
    return locations


def backoff(retries: int, env: Mapping[str, str]) -> float:
    """Exponential backoff with jitter: base * 2**retries, at most an hour, 50-100% of it."""
    base = float(env.get("WEATHER_TEXT_RETRY_BACKOFF") or 60)
    return float(min(BACKOFF_MAX, base * 2**retries) * random.uniform(0.5, 1.0))


def gave_up(task: Task, message: str) -> bool:
    """True, after logging one line, when the task has used all its retries."""
    if task.request.retries < task.max_retries:
        return False
    log.error("%s; gave up after %d retries", message, task.max_retries)
    return True


@functools.lru_cache(maxsize=4)
def guards(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def guard_key(local_date: str, location_key: str, receiver: str) -> str:
    return f"weather_text:sent:{local_date}:{location_key}:{receiver}"


@app.task
def morning_run() -> int:
    """Beat's task: one prepare_zip per zip."""
    try:
        locations = zips(wt.read_environment(None, os.environ))
    except wt.ConfigError as exc:
        log.error("%s", exc)
        return 0
    for location in locations:
        prepare_zip.delay(location.key)
    log.info("morning run: %d zip(s)", len(locations))
    return len(locations)


@app.task(bind=True, max_retries=MAX_RETRIES)
def prepare_zip(self: Task, location_key: str) -> int:
    """Fetch one zip's weather once, and queue its text for every receiver."""
    env: Mapping[str, str] = {}
    try:
        env = wt.read_environment(None, os.environ)
        config = wt.load_config(env, sending=True)
        zip_code, _, country = location_key.partition(",")
        location = wt.parse_location(zip_code, country)
        units = wt.default_units(location)
        report = wt.prepare_report(config, location, units, wt.StateDir(config.state_dir))
    except wt.TemporaryError as exc:
        if gave_up(self, f"{location_key}: {exc}"):
            return 0
        log.warning("%s: %s; retrying", location_key, exc)
        raise self.retry(countdown=backoff(self.request.retries, env)) from None
    except wt.WeatherTextError as exc:
        log.error("%s: %s (not retried)", location_key, exc)
        return 0
    for receiver in config.receivers:
        send_text.delay(location.key, report.local_date.isoformat(), receiver, report.body)
    return len(config.receivers)


@app.task(bind=True, max_retries=MAX_RETRIES)
def send_text(self: Task, location_key: str, local_date: str, receiver: str, body: str) -> str:
    """Send one text at most once: guarded in Redis by (local date, zip, receiver)."""
    try:
        env = wt.read_environment(None, os.environ)
        config = wt.load_config(env, sending=True)
    except wt.ConfigError as exc:
        log.error("%s (not retried)", exc)
        return "refused"
    date.fromisoformat(local_date)  # a malformed message fails here, before any guard
    store = guards(str(self.app.conf.broker_url))
    key = guard_key(local_date, location_key, receiver)
    to = wt.mask_number(receiver)
    if not store.set(key, "sending", nx=True, ex=GUARD_TTL):
        log.info("already sent (or being sent) on %s to %s for %s", local_date, to, location_key)
        return "already sent"
    outcome = wt.send_text(wt.make_twilio_client(config), config.sender, receiver, body)
    if outcome.accepted:
        store.set(key, "sent", xx=True, keepttl=True)
        log.info("%s", outcome.message)
        return "sent"
    if outcome.uncertain:
        # Twilio may have taken it: keep the guard, so nothing sends it a second time.
        log.error("%s", outcome.message)
        return "uncertain"
    store.delete(key)  # Twilio did not take it: a retry, or a later run, may send it
    if outcome.exit_code == wt.EX_TEMPFAIL:
        if gave_up(self, outcome.message):
            return "gave up"
        log.warning("%s; retrying", outcome.message)
        raise self.retry(countdown=backoff(self.request.retries, env))
    log.error("%s (not retried)", outcome.message)
    return "refused"


try:
    configure(app, wt.read_environment(None, os.environ))
except wt.ConfigError as exc:  # one line for `celery -A celery_app ...`, not a traceback
    print(f"celery_app: error: {exc}", file=sys.stderr)
    raise SystemExit(wt.EX_CONFIG) from None
