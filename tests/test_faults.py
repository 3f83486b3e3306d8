"""The fault matrix: every way a run can go wrong, and what the user sees and gets.

Each row states the exit code, a part of the one-line message, how many POSTs each receiver
gets from Twilio's point of view, and whether the once-a-day record names the receiver.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import standins
from tests.conftest import assert_no_secret
from tests.standins import RECEIVER, Reply

TIMEOUT = 0.5
HANG = Reply(200, b"{}", delay=TIMEOUT + 0.7)
HTML_502 = Reply(
    502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
)
TRUNCATED = Reply(200, b'{"coord": {"lon": -122.41, "la')
HTML_200 = Reply(200, b"<html><body>Welcome</body></html>", {"Content-Type": "text/html"})
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d weather_text: (warning: |error: )?\S")

Setup = Callable[[standins.OpenWeather, standins.Twilio, dict[str, str], Path], None]


@dataclass
class Row:
    id: str
    setup: Setup
    code: int
    message: str
    posts: int  # POSTs that reached the Twilio stand-in for the receiver
    recorded: bool  # the receiver is in today's once-a-day record afterwards
    zip: str = "94103"
    args: tuple[str, ...] = ()


def ow_fails(*replies: Reply, path: str = "/data/2.5/weather") -> Setup:
    return lambda ow, tw, settings, tmp: ow.fail(path, *replies)


def tw_fails(*replies: Reply) -> Setup:
    return lambda ow, tw, settings, tmp: tw.fail("/2010-04-01", *replies)


def setting(name: str, value: str | None) -> Setup:
    def setup(ow, tw, settings, tmp):
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value.format(tmp=tmp, closed=standins.closed_port())

    return setup


def secrets_file(content: str | None, mode: int = 0o600, directory: bool = False) -> Setup:
    """Move the Twilio settings into a secrets file (or make that path unreadable)."""

    def setup(ow, tw, settings, tmp):
        path = tmp / "secrets.sh"
        moved = {k: settings.pop(k) for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")}
        if directory:
            path.mkdir()  # as root, chmod cannot make a file unreadable; a directory is
        elif content is not None:
            path.write_text("".join(f"export {k}={v}\n" for k, v in moved.items()) + content)
            path.chmod(mode)

    return setup


def twilio_body(code: int, status: int) -> Reply:
    return Reply(
        status,
        {
            "code": code,
            "message": "The requested resource was not found",
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def both(*setups: Setup) -> Setup:
    def setup(ow, tw, settings, tmp):
        for one in setups:
            one(ow, tw, settings, tmp)

    return setup


def a_file(name: str) -> Setup:
    def setup(ow, tw, settings, tmp):
        (tmp / name).write_text("")  # a state dir below a plain file cannot be made

    return setup


NOTHING: Setup = lambda ow, tw, settings, tmp: None  # noqa: E731
MAYBE = "may or may not have gone out"
ROWS = [
    # --- OpenWeather ----------------------------------------------------------------------------
    Row(
        "ow refused",
        setting("OPENWEATHER_BASE_URL", "http://127.0.0.1:{closed}"),
        75,
        "could not connect to OpenWeather at http://127.0.0.1:",
        0,
        False,
    ),
    Row(
        "ow hangs",
        ow_fails(HANG, HANG, HANG),
        75,
        "OpenWeather did not answer within 0.5s (current weather, 3 tries).",
        0,
        False,
    ),
    Row(
        "ow 500",
        ow_fails(*[Reply(500, b"")] * 3),
        75,
        "OpenWeather is failing (HTTP 500) for current weather, 3 tries. Run again later.",
        0,
        False,
    ),
    Row(
        "ow 502 html", ow_fails(*[HTML_502] * 3), 75, "OpenWeather is failing (HTTP 502)", 0, False
    ),
    Row(
        "ow 503 retry-after",
        ow_fails(*[Reply(503, b"", {"Retry-After": "1"})] * 3),
        75,
        "OpenWeather is failing (HTTP 503)",
        0,
        False,
    ),
    Row("ow 503 then 200", ow_fails(Reply(503, b"", {"Retry-After": "1"})), 0, "", 1, True),
    Row(
        "ow 429",
        ow_fails(*[Reply(429, standins.fixture("openweather/error_429.json"))] * 3),
        75,
        "OpenWeather is rate-limiting this API key (HTTP 429) after 3 tries.",
        0,
        False,
    ),
    Row(
        "ow 401",
        setting("OPENWEATHER_API_KEY", "wrong-key-0123456789"),
        69,
        "OpenWeather rejected the API key (HTTP 401). Check OPENWEATHER_API_KEY; a new key can "
        "take up to a couple of hours to become active.",
        0,
        False,
    ),
    Row(
        "ow 404",
        NOTHING,
        69,
        "OpenWeather does not know zip 99999 in US (HTTP 404).",
        0,
        False,
        zip="99999",
    ),
    Row(
        "ow truncated json",
        ow_fails(TRUNCATED),
        75,
        "OpenWeather sent a malformed answer for current weather (application/json, not JSON)."
        " Run again later.",
        0,
        False,
    ),
    Row(
        "ow missing fields",
        ow_fails(Reply(200, {"cod": 200, "weather": []})),
        75,
        "OpenWeather's answer for current weather has no main.temp.",
        0,
        False,
    ),
    Row(
        "ow forecast missing list",
        ow_fails(Reply(200, {"cod": "200"}), path="/data/2.5/forecast"),
        75,
        "OpenWeather's answer for the forecast has no list.",
        0,
        False,
    ),
    Row(
        "ow wrong content type",
        ow_fails(HTML_200),
        75,
        "OpenWeather sent a malformed answer for current weather (text/html, not JSON).",
        0,
        False,
    ),
    # --- Twilio ---------------------------------------------------------------------------------
    Row(
        "tw refused",
        setting("TWILIO_BASE_URL", "http://127.0.0.1:{closed}"),
        75,
        "(3 tries); nothing was sent to +1******5310.",
        0,
        False,
    ),
    Row(
        "tw hangs",
        tw_fails(HANG),
        75,
        f"Twilio did not answer within 0.5s: the text to +1******5310 {MAYBE}.",
        1,
        False,
    ),
    Row(
        "tw 500",
        tw_fails(Reply(500, b"")),
        75,
        f"Twilio failed (HTTP 500): the text to +1******5310 {MAYBE}.",
        1,
        False,
    ),
    Row(
        "tw 502 html",
        tw_fails(HTML_502),
        75,
        f"Twilio failed (HTTP 502): the text to +1******5310 {MAYBE}.",
        1,
        False,
    ),
    Row(
        "tw 503 retry-after",
        tw_fails(*[Reply(503, b"", {"Retry-After": "1"})] * 3),
        75,
        "Twilio is busy (HTTP 503) after 3 tries; nothing was sent to +1******5310.",
        3,
        False,
    ),
    Row("tw 503 then 201", tw_fails(Reply(503, b"", {"Retry-After": "1"})), 0, "", 2, True),
    Row(
        "tw 429",
        tw_fails(*[Reply(429, {"code": 20429, "message": "Too Many Requests", "status": 429})] * 3),
        75,
        "Twilio is busy (HTTP 429) after 3 tries; nothing was sent",
        3,
        False,
    ),
    Row(
        "tw 401",
        setting("TWILIO_AUTH_TOKEN", "wrong-token-0123456789"),
        69,
        "Twilio rejected the credentials (20003).",
        1,
        False,
    ),
    Row(
        "tw 404 resource",
        tw_fails(twilio_body(20404, 404)),
        69,
        "Twilio refused the text to +1******5310 (HTTP 404, code 20404: The requested resource"
        " was not found). https://www.twilio.com/docs/errors/20404",
        1,
        False,
    ),
    Row("tw truncated json", tw_fails(Reply(201, b'{"sid": "SM12')), 0, "", 1, True),
    Row("tw missing fields", tw_fails(Reply(201, b"{}")), 0, "", 1, True),
    Row(
        "tw wrong content type",
        tw_fails(Reply(201, b"<html></html>", {"Content-Type": "text/html"})),
        0,
        "",
        1,
        True,
    ),
    # --- zip codes ------------------------------------------------------------------------------
    Row("zip abc", NOTHING, 2, "'abc' is not a US zip code.", 0, False, zip="abc"),
    Row("zip empty", NOTHING, 2, "the zip code is empty.", 0, False, zip=""),
    Row("zip 9410", NOTHING, 2, "'9410' is not a US zip code.", 0, False, zip="9410"),
    Row("zip 941031", NOTHING, 2, "'941031' is not a US zip code.", 0, False, zip="941031"),
    Row("zip 02135", NOTHING, 0, "", 1, True, zip="02135"),
    Row("zip 94103-1234", NOTHING, 0, "", 1, True, zip="94103-1234"),
    Row("zip E14,GB", NOTHING, 0, "", 1, True, zip="E14,GB"),
    # --- phone numbers --------------------------------------------------------------------------
    Row(
        "receiver malformed",
        setting("TWILIO_RECEIVER_NUMBER", "555-1234"),
        78,
        "TWILIO_RECEIVER_NUMBER '555-1234' is not a phone number in E.164 form.",
        0,
        False,
    ),
    Row("receiver foreign", setting("TWILIO_RECEIVER_NUMBER", "+447911123456"), 0, "", 0, False),
    Row(
        "receiver missing",
        setting("TWILIO_RECEIVER_NUMBER", None),
        78,
        "missing TWILIO_RECEIVER_NUMBER.",
        0,
        False,
    ),
    Row(
        "sender malformed",
        setting("TWILIO_SENDER_NUMBER", "Weather"),
        78,
        "TWILIO_SENDER_NUMBER 'Weather' is not a phone number in E.164 form.",
        0,
        False,
    ),
    Row(
        "sender missing",
        setting("TWILIO_SENDER_NUMBER", None),
        78,
        "missing TWILIO_SENDER_NUMBER.",
        0,
        False,
    ),
    Row(
        "--to malformed",
        NOTHING,
        78,
        "--to '+1 555' is not a phone number",
        0,
        False,
        args=("--to", "+1 555"),
    ),
    # --- the secrets file -----------------------------------------------------------------------
    Row("secrets missing", secrets_file(None), 78, "secrets file", 0, False),
    Row(
        "secrets unreadable",
        secrets_file(None, directory=True),
        78,
        "cannot read secrets file",
        0,
        False,
    ),
    Row(
        "secrets world-readable",
        secrets_file("", mode=0o644),
        0,
        "is readable by group or others. Run: chmod 600",
        1,
        True,
    ),
    Row(
        "secrets malformed",
        secrets_file("export = oops\nthis is not valid\n"),
        78,
        "line 3 is not `export KEY=value`.",
        0,
        False,
    ),
    # --- the state dir --------------------------------------------------------------------------
    Row(
        "state dir not writable",
        both(setting("WEATHER_TEXT_STATE_DIR", "{tmp}/a-file/state"), a_file("a-file")),
        78,
        "cannot write the state dir",
        0,
        False,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_fault(row: Row, settings, openweather, twilio, run, tmp_path, monkeypatch) -> None:
    settings["WEATHER_TEXT_TIMEOUT"] = str(TIMEOUT)
    row.setup(openweather, twilio, settings, tmp_path)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    args = [row.zip, *row.args]
    if row.id.startswith("secrets"):
        args += ["--env-file", str(tmp_path / "secrets.sh")]
    result = run(*args)

    assert result.code == row.code, result.err
    assert row.message in result.err
    lines = result.err.splitlines()
    if row.code == 2:
        assert len(lines) == 1 and "weather_text: error: " in lines[0]
        assert openweather.requests == []  # refused before any request
    else:
        assert all(LINE.match(line) for line in lines), result.err  # no traceback, no strays
        assert sum(" error: " in line for line in lines) == (row.code != 0)
    assert_no_secret(result.all)
    receiver = settings.get("TWILIO_RECEIVER_NUMBER", RECEIVER)
    assert twilio.posts(RECEIVER) == row.posts
    state = Path(settings["WEATHER_TEXT_STATE_DIR"]) / "sent.json"
    recorded = state.is_file() and any(
        RECEIVER in receivers
        for day in json.loads(state.read_text()).values()
        for receivers in day.values()
    )
    assert recorded == row.recorded
    if row.code == 0 and receiver != RECEIVER:
        assert twilio.posts(receiver) == 1
