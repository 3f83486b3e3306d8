"""Version 3, celery_app.py: a real Redis server and a real Celery worker, against the stand-ins."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.schedules import crontab
from celery.signals import task_postrun, task_retry

import celery_app
import weather_text as wt
from tests.conftest import ROOT
from tests.standins import RECEIVER, Reply

OTHER = "+15558675311"
LONDON = ZoneInfo("Europe/London")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server on a free loopback port, for this test session only."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        pytest.fail("redis-server is not installed: run scripts/install-test-services")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def events() -> Iterator[dict[str, list[tuple[str, object]]]]:
    """What the worker did: each task that ended (with its result), and each retry."""
    seen: dict[str, list[tuple[str, object]]] = {"done": [], "retried": []}
    lock = threading.Lock()

    def on_postrun(sender=None, retval=None, state=None, **_: object) -> None:
        with lock:
            seen["done"].append((sender.name, retval if state == "SUCCESS" else state))

    def on_retry(sender=None, **_: object) -> None:
        with lock:
            seen["retried"].append((sender.name, None))

    task_postrun.connect(on_postrun, weak=False)
    task_retry.connect(on_retry, weak=False)
    yield seen
    task_postrun.disconnect(on_postrun)
    task_retry.disconnect(on_retry)


@pytest.fixture
def worker(redis_url, env, monkeypatch):
    """A real Celery worker thread on that Redis, the tasks reading the stand-in settings."""
    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)
    monkeypatch.setenv("WEATHER_TEXT_RETRY_BACKOFF", "0.2")
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", f"{RECEIVER},{OTHER}")
    monkeypatch.setenv("WEATHER_TEXT_ZIPS", "94103,02135")
    celery_app.configure(celery_app.app, {"CELERY_BROKER_URL": redis_url, "WEATHER_TEXT_TZ": "UTC"})
    redis.Redis.from_url(redis_url).flushdb()
    with start_worker(
        celery_app.app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"
    ):
        yield


def wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finished(events, name: str, count: int) -> bool:
    return sum(1 for task, _ in events["done"] if task == f"celery_app.{name}") >= count


# --- configuration and the beat entry ------------------------------------------------------------


def test_the_beat_entry_is_a_crontab_at_the_local_time_and_zone() -> None:
    app = Celery("probe")
    celery_app.configure(app, {"WEATHER_TEXT_AT": "06:30", "WEATHER_TEXT_TZ": "Europe/London"})
    assert app.conf.timezone == "Europe/London"
    entry = app.conf.beat_schedule["morning-text"]
    assert entry["task"] == "celery_app.morning_run"
    schedule = entry["schedule"]
    assert schedule == crontab(hour=6, minute=30)
    schedule.app = app
    last_run = datetime(2026, 12, 3, 6, 30, tzinfo=LONDON)
    schedule.nowfun = lambda: datetime(2026, 12, 4, 6, 29, tzinfo=LONDON)
    assert schedule.is_due(last_run)[0] is False
    schedule.nowfun = lambda: datetime(2026, 12, 4, 6, 30, 5, tzinfo=LONDON)
    assert schedule.is_due(last_run)[0] is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEATHER_TEXT_AT": "7am"}, "WEATHER_TEXT_AT '7am' is not a time of day."),
        ({"WEATHER_TEXT_TZ": "Mars/Base"}, "WEATHER_TEXT_TZ 'Mars/Base' is not a time zone."),
    ],
)
def test_bad_schedule_settings_are_configuration_errors(env, message) -> None:
    with pytest.raises(wt.ConfigError, match=message):
        celery_app.configure(Celery("probe"), env)


def test_zips_read_other_countries_as_zip_colon_country() -> None:
    keys = [loc.key for loc in celery_app.zips({"WEATHER_TEXT_ZIPS": "94103, 02135,E14:GB"})]
    assert keys == ["94103,US", "02135,US", "E14,GB"]
    with pytest.raises(wt.ConfigError, match="WEATHER_TEXT_ZIPS: '9410' is not a US zip"):
        celery_app.zips({"WEATHER_TEXT_ZIPS": "9410"})


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    env = {"WEATHER_TEXT_RETRY_BACKOFF": "10"}
    for retries, full in [(0, 10), (1, 20), (3, 80), (20, 3600)]:
        waits = [celery_app.backoff(retries, env) for _ in range(50)]
        assert all(full / 2 <= w <= full for w in waits)
        assert len(set(waits)) > 1


# --- the worker ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_run_fans_out_to_every_zip_and_receiver_fetching_each_zip_once(
    worker, events, twilio, openweather
) -> None:
    celery_app.morning_run.delay()
    wait_for(lambda: finished(events, "send_text", 4))
    sent = {(m["To"], m["Body"].split(":")[0]) for m in twilio.messages}
    assert sent == {
        (RECEIVER, "San Francisco"),
        (OTHER, "San Francisco"),
        (RECEIVER, "Brighton"),
        (OTHER, "Brighton"),
    }
    assert twilio.posts() == 4
    assert openweather.count("/data/2.5/weather") == 2
    assert openweather.count("/data/2.5/forecast") == 2


@pytest.mark.slow
def test_the_same_task_delivered_twice_sends_one_text(worker, events, twilio) -> None:
    args = ("94103,US", "2026-12-04", RECEIVER, "San Francisco: 55F, light rain.")
    celery_app.send_text.delay(*args)
    celery_app.send_text.delay(*args)
    wait_for(lambda: finished(events, "send_text", 2))
    assert twilio.posts() == 1
    results = sorted(str(result) for _, result in events["done"])
    assert results == ["already sent", "sent"]


@pytest.mark.slow
def test_a_temporary_failure_is_retried_and_then_sends_once(worker, events, twilio) -> None:
    busy = Reply(
        429, {"code": 20429, "message": "Too Many Requests", "status": 429}, {"Retry-After": "0"}
    )
    twilio.fail_to(RECEIVER, busy, busy, busy)  # the client's own three tries, all 429
    celery_app.send_text.delay("94103,US", "2026-12-04", RECEIVER, "text")
    wait_for(lambda: ("celery_app.send_text", "sent") in events["done"])
    assert events["retried"] == [("celery_app.send_text", None)]
    assert twilio.posts(RECEIVER) == 4
    assert [m["To"] for m in twilio.messages] == [RECEIVER]


@pytest.mark.slow
def test_a_failing_weather_fetch_is_retried_then_fans_out(worker, events, twilio, openweather):
    openweather.fail("/data/2.5/forecast", *[Reply(503, b"")] * 3)
    celery_app.prepare_zip.delay("94103,US")
    wait_for(lambda: finished(events, "send_text", 2))
    assert events["retried"] == [("celery_app.prepare_zip", None)]
    assert sorted(m["To"] for m in twilio.messages) == sorted([RECEIVER, OTHER])


@pytest.mark.slow
def test_a_permanent_refusal_is_not_retried_and_frees_the_guard(
    worker, events, twilio, redis_url
) -> None:
    twilio.stopped.add(RECEIVER)
    celery_app.send_text.delay("94103,US", "2026-12-04", RECEIVER, "text")
    wait_for(lambda: finished(events, "send_text", 1))
    assert events["done"] == [("celery_app.send_text", "refused")]
    assert events["retried"] == []
    assert twilio.posts() == 1
    key = celery_app.guard_key("2026-12-04", "94103,US", RECEIVER)
    assert redis.Redis.from_url(redis_url).exists(key) == 0


@pytest.mark.slow
def test_a_twilio_timeout_keeps_the_guard_and_is_not_retried(
    worker, events, twilio, redis_url, monkeypatch
) -> None:
    monkeypatch.setenv("WEATHER_TEXT_TIMEOUT", "0.5")
    twilio.fail_to(RECEIVER, Reply(201, {"sid": "SM1"}, delay=1.2))
    celery_app.send_text.delay("94103,US", "2026-12-04", RECEIVER, "text")
    wait_for(lambda: finished(events, "send_text", 1))
    assert events["done"] == [("celery_app.send_text", "uncertain")]
    assert events["retried"] == []
    key = celery_app.guard_key("2026-12-04", "94103,US", RECEIVER)
    assert redis.Redis.from_url(redis_url).exists(key) == 1


@pytest.mark.slow
def test_the_readmes_single_box_command_texts_at_the_configured_minute(
    redis_url, settings, twilio, tmp_path
) -> None:
    # `celery -A celery_app worker --beat`, as the README gives it, as a real process.
    redis.Redis.from_url(redis_url).flushdb()
    now = datetime.now(ZoneInfo("UTC"))
    due = now.replace(second=0, microsecond=0) + timedelta(minutes=1 if now.second < 50 else 2)
    env = {
        **settings,
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "CELERY_BROKER_URL": redis_url,
        "WEATHER_TEXT_ZIPS": "94103",
        "WEATHER_TEXT_AT": due.strftime("%H:%M"),
        "WEATHER_TEXT_TZ": "UTC",
    }
    celery = Path(sys.executable).parent / "celery"
    process = subprocess.Popen(
        [
            str(celery),
            "-A",
            "celery_app",
            "worker",
            "--beat",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "-s",
            str(tmp_path / "beat-schedule"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: twilio.posts() >= 1, seconds=150)
        assert [m["To"] for m in twilio.messages] == [RECEIVER]
        assert datetime.now(ZoneInfo("UTC")) >= due
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_retries_are_bounded(worker, events, twilio, redis_url) -> None:
    busy = Reply(503, b"", {"Retry-After": "0"})
    tries = celery_app.MAX_RETRIES + 1
    twilio.fail_to(RECEIVER, *[busy] * (3 * tries))  # every try: the client's three POSTs
    celery_app.send_text.delay("94103,US", "2026-12-04", RECEIVER, "text")
    wait_for(
        lambda: (
            finished(events, "send_text", 1)
            and ("celery_app.send_text", "gave up") in events["done"]
        ),
        seconds=60,
    )
    assert len(events["retried"]) == celery_app.MAX_RETRIES
    assert twilio.posts(RECEIVER) == 3 * tries
    assert twilio.messages == []
    key = celery_app.guard_key("2026-12-04", "94103,US", RECEIVER)
    assert redis.Redis.from_url(redis_url).exists(key) == 0
