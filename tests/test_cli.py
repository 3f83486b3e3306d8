"""The whole program, from main() or as a process, against the local stand-ins."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import standins
from tests.conftest import ROOT, assert_no_secret, run_script
from tests.standins import RECEIVER, SENDER, Reply

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d weather_text: "
TWO_MORE = ["+15558675311", "+15558675312"]


def sent_record(state_dir: Path) -> Any:
    return json.loads((state_dir / "sent.json").read_text())


def twilio_error(code: int, status: int = 400, message: str = "refused") -> Reply:
    more = f"https://www.twilio.com/docs/errors/{code}"
    return Reply(status, {"code": code, "message": message, "more_info": more, "status": status})


def test_sends_one_text_and_logs_sid_masked_number_and_segments(
    env, run, twilio, openweather, state_dir
) -> None:
    result = run("94103")
    assert result.code == 0
    assert result.out == ""
    assert re.fullmatch(STAMP + r"sent SM0{31}1 to \+1\*\*\*\*\*\*5310 \(1 segment\)\n", result.err)
    [message] = twilio.messages
    assert (message["To"], message["From"]) == (RECEIVER, SENDER)
    assert message["Body"].startswith("San Francisco: ")
    assert len(message["Body"]) <= 160
    # The weather was asked by coordinates, in Fahrenheit for a US zip.
    weather = [r for r in openweather.requests if r.path == "/data/2.5/weather"]
    assert weather[0].query["units"] == "imperial"
    assert (weather[0].query["lat"], weather[0].query["lon"]) == ("37.7725", "-122.4147")
    [day] = sent_record(state_dir).values()
    assert day == {"94103,US": [RECEIVER]}


def test_dry_run_prints_only_the_text_and_sends_and_records_nothing(
    settings, run, twilio, state_dir, monkeypatch
) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_RECEIVER_NUMBER"):
        settings.pop(name)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    result = run("94103", "--dry-run")
    assert result.code == 0
    body = result.out.removesuffix("\n")
    assert "\n" not in body and body.startswith("San Francisco: ")
    assert re.fullmatch(STAMP + rf"{len(body)} characters, GSM-7, 1 segment\n", result.err)
    assert twilio.requests == []
    assert not state_dir.exists()


def test_dry_run_does_not_import_twilio(settings) -> None:
    code = (
        "import sys, weather_text\n"
        "code = weather_text.main(['94103', '--dry-run', '-q'])\n"
        "print(code, 'twilio' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], **settings},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines()[-1] == "0 False"


def test_units_default_to_metric_outside_the_us_and_can_be_chosen(env, run, openweather) -> None:
    assert run("E14,GB", "--dry-run").code == 0
    assert run("94103", "--dry-run", "--units", "metric").code == 0
    units = [r.query["units"] for r in openweather.requests if r.path == "/data/2.5/weather"]
    assert units == ["metric", "metric"]
    assert [r.query["zip"] for r in openweather.requests if r.path == "/geo/1.0/zip"] == [
        "E14,GB",
        "94103,US",
    ]


def test_the_geocoding_answer_is_cached_so_a_steady_run_asks_two_requests(
    env, run, openweather
) -> None:
    assert run("94103").code == 0
    assert openweather.count() == 3
    assert run("94103", "--force").code == 0
    assert openweather.count("/geo/") == 1
    assert openweather.count() == 5  # the second run: current weather and forecast only


def test_a_second_run_the_same_local_day_sends_nothing_and_exits_0(env, run, twilio) -> None:
    assert run("94103").code == 0
    again = run("94103")
    assert again.code == 0
    assert re.search(
        r"already sent today \(\d{4}-\d\d-\d\d\) to \+1\*\*\*\*\*\*5310; --force to send again",
        again.err,
    )
    assert twilio.posts() == 1


def test_force_sends_again(env, run, twilio) -> None:
    assert run("94103").code == 0
    assert run("94103", "--force").code == 0
    assert twilio.posts() == 2


def test_quiet_prints_nothing_on_success(env, run, twilio) -> None:
    result = run("94103", "--quiet")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert twilio.posts() == 1


def test_every_receiver_gets_one_text(env, run, twilio, monkeypatch) -> None:
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", ",".join([RECEIVER, *TWO_MORE]))
    result = run("94103")
    assert result.code == 0
    assert sorted(m["To"] for m in twilio.messages) == sorted([RECEIVER, *TWO_MORE])
    assert len({m["Body"] for m in twilio.messages}) == 1
    assert result.err.count(" sent SM") == 3


def test_to_replaces_the_receivers_for_this_run(env, run, twilio) -> None:
    assert run("94103", "--to", "15558675399", "--to", "+15558675398").code == 0
    assert sorted(m["To"] for m in twilio.messages) == ["+15558675398", "+15558675399"]


def test_a_rerun_after_a_partial_failure_sends_only_to_those_who_missed_it(
    env, run, twilio, monkeypatch
) -> None:
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", ",".join([RECEIVER, *TWO_MORE]))
    twilio.unverified.add(TWO_MORE[1])
    first = run("94103")
    assert first.code == 69
    assert "Twilio refused +1******5312: a trial account only texts verified numbers" in first.err
    twilio.unverified.clear()
    second = run("94103")
    assert second.code == 0
    assert [twilio.posts(n) for n in [RECEIVER, *TWO_MORE]] == [1, 1, 2]
    assert second.err.count("already sent today") == 2


def test_the_most_serious_outcome_wins_among_receivers(env, run, twilio, monkeypatch) -> None:
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", ",".join([RECEIVER, *TWO_MORE]))
    twilio.stopped.add(TWO_MORE[0])  # 69 for good
    twilio.fail_to(TWO_MORE[1], Reply(500, {"code": 20500, "status": 500}))  # 75 for another
    result = run("94103")
    assert result.code == 69
    assert "that number replied STOP (21610)" in result.err
    assert "Twilio failed (HTTP 500): the text to +1******5312 may or may not" in result.err
    assert re.search(r"sent SM\w+ to \+1\*{6}5310", result.err)


def test_openweather_503_then_200_sends_once(env, run, twilio, openweather) -> None:
    openweather.fail("/data/2.5/weather", Reply(503, "busy", {"Retry-After": "0"}))
    result = run("94103")
    assert result.code == 0
    assert openweather.count("/data/2.5/weather") == 2
    assert twilio.posts() == 1


def test_a_twilio_read_timeout_is_not_retried_and_exits_75(
    env, run, twilio, state_dir, monkeypatch
) -> None:
    monkeypatch.setenv("WEATHER_TEXT_TIMEOUT", "0.5")
    twilio.fail("/2010-04-01", Reply(201, {"sid": "SM1"}, delay=1.5))
    result = run("94103")
    assert result.code == 75
    assert twilio.posts() == 1
    assert (
        "Twilio did not answer within 0.5s: the text to +1******5310 may or may not have gone out"
        in result.err
    )
    assert not (state_dir / "sent.json").exists()


def test_twilio_429_is_retried_then_sends_once(env, run, twilio) -> None:
    twilio.fail("/2010-04-01", Reply(429, {"code": 20429, "status": 429}, {"Retry-After": "0"}))
    result = run("94103")
    assert result.code == 0
    assert twilio.posts() == 2
    assert len(twilio.messages) == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            Reply(401, standins.fixture("twilio/error-401-20003-captured.json")),
            "Twilio rejected the credentials (20003). Check TWILIO_ACCOUNT_SID and "
            "TWILIO_AUTH_TOKEN in the Twilio console.",
        ),
        (
            Reply(400, standins.fixture("twilio/error-400-21211-docs.json")),
            "Twilio says +1******5310 is not a valid phone number (21211). "
            "Check TWILIO_RECEIVER_NUMBER.",
        ),
        (
            twilio_error(21614),
            "Twilio says +1******5310 is not a mobile number (21614). Give a number that gets SMS.",
        ),
        (
            twilio_error(21212),
            "Twilio says the sender +1******0006 is not a number of this account (21212). "
            "Check TWILIO_SENDER_NUMBER.",
        ),
        (
            twilio_error(21606),
            "Twilio says the sender +1******0006 cannot send SMS (21606). Set "
            "TWILIO_SENDER_NUMBER to an SMS-capable number of this account.",
        ),
        (
            Reply(400, standins.fixture("twilio/error-400-21608-captured.json")),
            "Twilio refused +1******5310: a trial account only texts verified numbers (21608). "
            "Verify the number in the Twilio console, or upgrade the account.",
        ),
        (
            twilio_error(21610),
            "Twilio refused +1******5310: that number replied STOP (21610). It gets texts "
            "again only after it texts START to your number.",
        ),
        (
            twilio_error(21408),
            "Twilio refused +1******5310: SMS to that country is not enabled (21408). Enable "
            "it in the console under Messaging > Settings > Geo permissions.",
        ),
        (
            twilio_error(30410, message="Provider timeout"),
            "Twilio refused the text to +1******5310 (HTTP 400, code 30410: Provider timeout)."
            " https://www.twilio.com/docs/errors/30410",
        ),
        (
            Reply(400, standins.fixture("twilio/error-400-rfc9457-twilio-python-tests.json")),
            "Twilio refused the text to +1******5310 (HTTP 400, code 20001: The 'PhoneNumber' "
            "parameter is required.). https://www.twilio.com/docs/errors/20001",
        ),
    ],
)
def test_twilio_refusals_say_what_to_fix_and_exit_69(
    env, run, twilio, state_dir, reply: Reply, message: str
) -> None:
    twilio.fail("/2010-04-01", reply)
    result = run("94103")
    assert result.code == 69
    assert result.err.endswith(f"weather_text: error: {message}\n")
    assert twilio.posts() == 1
    assert not (state_dir / "sent.json").exists()


def test_openweather_401_names_both_causes(env, run, monkeypatch) -> None:
    monkeypatch.setenv("OPENWEATHER_API_KEY", "not-the-key-0123456789")
    result = run("94103")
    assert result.code == 69
    assert result.err.endswith(
        "weather_text: error: OpenWeather rejected the API key (HTTP 401). Check "
        "OPENWEATHER_API_KEY; a new key can take up to a couple of hours to become active.\n"
    )
    assert "not-the-key-0123456789" not in result.all


def test_an_unknown_zip_exits_69(env, run, twilio) -> None:
    result = run("99999")
    assert result.code == 69
    assert (
        "OpenWeather does not know zip 99999 in US (HTTP 404). Check the zip code, or give "
        "its country with --country CC." in result.err
    )
    assert twilio.requests == []


def test_missing_settings_are_listed_in_one_line_and_exit_78(run, twilio) -> None:
    result = run("94103")
    assert result.code == 78
    assert result.err.count("\n") == 1
    assert (
        "weather_text: error: missing OPENWEATHER_API_KEY, TWILIO_ACCOUNT_SID, "
        "TWILIO_AUTH_TOKEN, TWILIO_SENDER_NUMBER, TWILIO_RECEIVER_NUMBER." in result.err
    )


def test_usage_errors_are_one_line_and_exit_2(run) -> None:
    for args in (["--units", "kelvin", "94103"], [], ["94103", "--bogus"]):
        result = run(*args)
        assert result.code == 2
        assert result.err.startswith("weather_text: error: ") and result.err.count("\n") == 1
        assert "Traceback" not in result.err


def test_help_lists_the_environment_and_exit_codes(run) -> None:
    with pytest.raises(SystemExit) as done:
        run("--help")
    assert done.value.code == 0


def test_help_text(capsys) -> None:
    import weather_text

    text = weather_text.build_parser().format_help()
    for name in ("OPENWEATHER_API_KEY", "TWILIO_RECEIVER_NUMBER", "WEATHER_TEXT_STATE_DIR"):
        assert name in text
    assert "75  temporary failure" in text and "78  configuration error" in text


# --- the secrets file ----------------------------------------------------------------------------


def write_secrets(path: Path, settings: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text("".join(f"export {k}={v}\n" for k, v in settings.items()))
    path.chmod(mode)
    return path


def test_missing_settings_are_read_from_the_env_file(settings, run, twilio, tmp_path) -> None:
    secrets = write_secrets(tmp_path / "secrets.sh", settings)
    result = run("94103", "--env-file", str(secrets))
    assert result.code == 0
    assert twilio.posts() == 1
    assert "readable by group or others" not in result.err


def test_the_environment_wins_over_the_file(settings, run, twilio, tmp_path, monkeypatch) -> None:
    secrets = write_secrets(tmp_path / "secrets.sh", settings)
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", "+15550009999")
    assert run("94103", "--env-file", str(secrets)).code == 0
    assert [m["To"] for m in twilio.messages] == ["+15550009999"]


def test_a_secrets_file_readable_by_others_gets_a_warning(settings, run, tmp_path) -> None:
    secrets = write_secrets(tmp_path / "secrets.sh", settings, mode=0o644)
    result = run("94103", "--env-file", str(secrets), "--dry-run")
    assert result.code == 0
    assert (
        f"weather_text: warning: secrets file {secrets} is readable by group or others. "
        f"Run: chmod 600 {secrets}" in result.err
    )


def test_the_secrets_file_is_parsed_never_executed(settings, run, tmp_path) -> None:
    secrets = write_secrets(tmp_path / "secrets.sh", settings)
    marker = tmp_path / "executed"
    with secrets.open("a") as stream:
        stream.write(f"export OTHER=$(touch {marker})\n# a comment\n\n")
    assert run("94103", "--env-file", str(secrets), "--dry-run").code == 0
    assert not marker.exists()


def test_secrets_sh_beside_the_script_is_read_by_plain_and_sourced_runs(
    settings, twilio, tmp_path
) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "weather_text.py", checkout)
    write_secrets(checkout / "secrets.sh", settings)
    plain = subprocess.run(
        [sys.executable, "weather_text.py", "94103"],
        cwd=checkout,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stderr
    sourced = subprocess.run(
        ["/bin/sh", "-c", f". ./secrets.sh && {sys.executable} weather_text.py 94103 --force"],
        cwd=checkout,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert sourced.returncode == 0, sourced.stderr
    assert twilio.posts() == 2


# --- time zones and overlapping runs --------------------------------------------------------------


def test_today_is_the_zips_day_whatever_the_hosts_time_zone(settings, twilio, tmp_path) -> None:
    # The host thinks it is in Tokyo (UTC+9); the zip is in Honolulu (UTC-10): 19 hours apart,
    # so for most of each day the two calendars disagree. The record must follow Honolulu.
    result = run_script(["96815"], {**settings, "TZ": "Asia/Tokyo"}, cwd=tmp_path)
    assert result.code == 0, result.err
    honolulu_today = datetime.now(ZoneInfo("Pacific/Honolulu")).date().isoformat()
    record = sent_record(Path(settings["WEATHER_TEXT_STATE_DIR"]))
    assert record == {honolulu_today: {"96815,US": [RECEIVER]}}


def test_two_overlapping_runs_send_one_text(settings, twilio, openweather, tmp_path) -> None:
    openweather.latency = 0.3  # both runs are in flight at once
    command = [sys.executable, str(ROOT / "weather_text.py"), "94103"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **settings}
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=60), p.stderr.read().decode()) for p in runs]  # type: ignore[union-attr]
    assert [code for code, _ in results] == [0, 0]
    assert twilio.posts() == 1
    assert sum("already sent today" in err for _, err in results) == 1


def test_no_secret_in_any_output_even_verbose(settings, run, openweather, twilio, monkeypatch):
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    outputs = []
    openweather.fail("/geo/", Reply(500, "oops"), Reply(500, "oops"), Reply(500, "oops"))
    outputs.append(run("94103", "-v"))
    monkeypatch.setenv("OPENWEATHER_BASE_URL", f"http://127.0.0.1:{standins.closed_port()}")
    outputs.append(run("94103", "-v"))
    monkeypatch.setenv("OPENWEATHER_BASE_URL", openweather.url)
    twilio.fail("/2010-04-01", Reply(401, standins.fixture("twilio/error-401-20003-captured.json")))
    outputs.append(run("94103", "-v"))
    outputs.append(run("94103", "-v", "--force"))
    assert [o.code for o in outputs] == [75, 75, 69, 0]
    for output in outputs:
        assert_no_secret(output.all)
        assert "Traceback" not in output.all


def test_a_record_that_cannot_be_written_is_reported_for_each_receiver(
    env, run, twilio, state_dir, monkeypatch
) -> None:
    # The state dir is fine when the run starts, but sent.json cannot be replaced: a
    # directory stands where the file goes. Every text went out; each one says so.
    monkeypatch.setenv("TWILIO_RECEIVER_NUMBER", ",".join([RECEIVER, *TWO_MORE]))
    (state_dir / "sent.json").mkdir(parents=True)
    result = run("94103")
    assert result.code == 78
    assert twilio.posts() == 3
    assert result.err.count("went out, but recording it in") == 3
    assert "Fix the state dir before the next run, or it sends again." in result.err


def test_twilio_region_and_edge_do_not_move_a_base_url_that_was_set(
    env, run, twilio, monkeypatch
) -> None:
    # The twilio client would rewrite 127.0.0.1 into 127.ie1.0.1 (its host-name rule).
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    assert run("94103").code == 0
    assert twilio.posts() == 1


def test_current_weather_and_forecast_are_asked_together(env, run, openweather) -> None:
    openweather.latency = 0.3
    assert run("94103", "--dry-run").code == 0
    [current] = [r.at for r in openweather.requests if r.path == "/data/2.5/weather"]
    [forecast] = [r.at for r in openweather.requests if r.path == "/data/2.5/forecast"]
    assert abs(current - forecast) < 0.25  # one did not wait for the other (0.3 s) answer


def test_the_log_masks_secrets_and_a_daily_reload_keeps_one_mask(capsys) -> None:
    import logging

    import weather_text

    weather_text.setup_logging(quiet=False, verbose=False)
    for _ in range(3):  # run_schedule reloads the settings every morning
        weather_text.redact_secrets({"OPENWEATHER_API_KEY": "key-0123456789"})
    logging.getLogger("weather_text").info("url ...&appid=key-0123456789")
    assert capsys.readouterr().err.endswith("url ...&appid=********\n")
    [handler] = [h for h in logging.getLogger().handlers if getattr(h, "_weather_text", False)]
    assert len(handler.filters) == 1
