"""Version 2, run_schedule.py: the real schedule library, the clock driven by time-machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import schedule
import time_machine

import run_schedule
from tests.conftest import ROOT
from tests.standins import Reply

LA = ZoneInfo("America/Los_Angeles")


def args_for(*argv: str):
    return run_schedule.build_parser().parse_args(list(argv))


def test_the_job_fires_at_the_configured_local_time(settings, twilio, caplog) -> None:
    # The host runs on UTC; the text is due at 07:00 in Los Angeles (15:00 UTC in winter).
    with time_machine.travel(datetime(2026, 12, 4, 6, 59, tzinfo=LA), tick=False) as clock:
        scheduler = schedule.Scheduler()
        job = run_schedule.morning_job(args_for("94103", "--at", "07:00"), settings)
        entry = run_schedule.schedule_daily(scheduler, "07:00", "America/Los_Angeles", job)
        assert run_schedule.next_run_text(entry, "America/Los_Angeles") == "2026-12-04 07:00 PST"
        scheduler.run_pending()
        assert twilio.posts() == 0
        clock.move_to(datetime(2026, 12, 4, 7, 0, 1, tzinfo=LA))
        scheduler.run_pending()
        assert twilio.posts() == 1
        assert run_schedule.next_run_text(entry, "America/Los_Angeles") == "2026-12-05 07:00 PST"


def test_a_failing_morning_is_logged_and_the_next_one_runs(
    settings, twilio, openweather, caplog
) -> None:
    openweather.fail("/data/2.5/weather", *[Reply(500, b"")] * 3)
    with time_machine.travel(datetime(2026, 12, 4, 6, 59, tzinfo=LA), tick=False) as clock:
        scheduler = schedule.Scheduler()
        job = run_schedule.morning_job(args_for("94103", "--at", "07:00"), settings)
        run_schedule.schedule_daily(scheduler, "07:00", "America/Los_Angeles", job)
        clock.move_to(datetime(2026, 12, 4, 7, 0, 1, tzinfo=LA))
        scheduler.run_pending()  # does not raise
        assert twilio.posts() == 0
        assert "OpenWeather is failing (HTTP 500)" in caplog.text
        assert "today's run ended with exit code 75; the next run is tomorrow" in caplog.text
        clock.move_to(datetime(2026, 12, 5, 7, 0, 1, tzinfo=LA))
        scheduler.run_pending()
        assert twilio.posts() == 1


def test_an_unexpected_error_in_the_job_does_not_escape(settings, caplog) -> None:
    broken = args_for("94103", "--at", "07:00")
    broken.zip = None  # not a string: parsing it raises AttributeError inside the job
    job = run_schedule.morning_job(broken, settings)
    assert job() == 70
    assert "internal error (AttributeError); the schedule goes on." in caplog.text


@pytest.mark.parametrize(
    ("now", "expected"),
    [("06:59", False), ("07:00", True), ("23:30", True)],
)
def test_past_todays_time_uses_the_zone_given(now: str, expected: bool) -> None:
    hour, minute = map(int, now.split(":"))
    moment = datetime(2026, 12, 4, hour, minute, tzinfo=LA)
    assert run_schedule.past_todays_time("07:00", "America/Los_Angeles", moment) is expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["94103", "--at", "7am"], "--at '7am' is not a time of day. Use HH:MM, like 07:00."),
        (["94103", "--at", "07:00", "--tz", "Mars/Olympus"], "--tz 'Mars/Olympus' is not a time"),
        (["94103"], "the following arguments are required: --at"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(argv, message, capsys) -> None:
    assert run_schedule.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_schedule: error: ") and message in err and err.count("\n") == 1


def test_bad_settings_fail_at_start_not_tomorrow(capsys) -> None:
    assert run_schedule.main(["94103", "--at", "07:00"], environ={}) == 78
    assert "error: missing OPENWEATHER_API_KEY" in capsys.readouterr().err


def start(settings, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_schedule.py"), "94103", *extra],
        env={"PATH": os.environ["PATH"], "HOME": settings["WEATHER_TEXT_STATE_DIR"], **settings},
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(process: subprocess.Popen[str], needle: str, seconds: float = 30) -> str:
    seen = ""
    deadline = time.monotonic() + seconds
    assert process.stderr is not None
    while needle not in seen and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen += line
    assert needle in seen, seen
    return seen


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        _, rest = process.communicate(timeout=10)
        assert "got SIGTERM: stopped" in rest
        return process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        _, rest = process.communicate()
        pytest.fail(f"SIGTERM did not end run_schedule.py within 10 s; it said:\n{rest}")


def test_catch_up_sends_now_when_todays_text_is_missing_and_sigterm_exits_0(
    settings, twilio
) -> None:
    process = start(settings, "--at", "00:00", "--tz", "UTC", "--catch-up")
    seen = read_until(process, " sent SM")
    assert "next text at " in seen and "UTC" in seen
    assert stop(process) == 0
    assert twilio.posts() == 1


def test_catch_up_sends_nothing_when_today_was_sent(settings, twilio) -> None:
    first = start(settings, "--at", "00:00", "--tz", "UTC", "--catch-up")
    read_until(first, " sent SM")
    assert stop(first) == 0
    second = start(settings, "--at", "00:00", "--tz", "UTC", "--catch-up")
    read_until(second, "already sent today")
    assert stop(second) == 0
    assert twilio.posts() == 1


def test_without_catch_up_a_late_start_waits_for_tomorrow(settings, twilio) -> None:
    process = start(settings, "--at", "00:00", "--tz", "UTC")
    read_until(process, "next text at ")
    time.sleep(0.5)  # would have been plenty to fetch and send
    assert stop(process) == 0
    assert twilio.posts() == 0
