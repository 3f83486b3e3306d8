#!/usr/bin/env python3
"""Text today's weather for a zipcode by SMS, once a day, from cron.

usage: weather_text.py ZIP [--country CC] [--units imperial|metric] [--to NUMBER]...
                       [--dry-run] [--force] [--env-file PATH] [-q] [-v]

Fetches the weather where ZIP is from OpenWeather (free tier: geocoding, current
weather and the 5 day / 3 hour forecast), writes one short SMS segment about today
*where the zipcode is*, and sends it through Twilio to each receiver at most once per
local day.

Environment (values already set win; missing ones are read from secrets.sh beside
this file, or from --env-file PATH, a file of `export KEY=value` lines; never executed):
  OPENWEATHER_API_KEY      OpenWeather API key
  TWILIO_ACCOUNT_SID       Twilio Account SID (AC...)
  TWILIO_AUTH_TOKEN        Twilio Auth Token
  TWILIO_SENDER_NUMBER     your Twilio number, E.164 (+15551234567)
  TWILIO_RECEIVER_NUMBER   who gets the text; several: comma-separated
  OPENWEATHER_BASE_URL     default https://api.openweathermap.org
  TWILIO_BASE_URL          default https://api.twilio.com
  WEATHER_TEXT_STATE_DIR   default $XDG_STATE_HOME/weather_text or ~/.local/state/weather_text
  WEATHER_TEXT_TIMEOUT     seconds to wait for each HTTP answer, default 10

Exit status:
  0   sent, or nothing left to send today
  2   usage error (bad arguments, malformed zip)
  69  a service refused for good (bad key, unknown zip, invalid or unverified number)
  70  internal error (a bug: please report it)
  75  temporary failure (network, timeouts, 5xx, 429 after retries): run again later
  78  configuration error (missing or invalid settings, unreadable secrets file,
      a state dir that cannot be written)
With several receivers, the most serious outcome wins (78 > 69 > 75 > 0).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import io
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import time
import traceback
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

if TYPE_CHECKING:
    from twilio.rest import Client

PROG = "weather_text"

OPENWEATHER_BASE_URL = "https://api.openweathermap.org"
TWILIO_BASE_URL = "https://api.twilio.com"
DEFAULT_TIMEOUT = 10.0
# Three tries in all; urllib3 sleeps 0 s, then 1 s, between them.
TRIES = 3
BACKOFF_FACTOR = 0.5
RETRY_AFTER_MAX = 30  # seconds: a cron job should not sleep for an hour on a Retry-After
FORECAST_STEPS = 9  # 3-hour steps: 27 hours, enough for the rest of any local day
LOCK_WAIT = 120.0  # seconds a run waits for an overlapping run to finish
SEND_WORKERS = 32  # receivers texted at once; Twilio answers 429 past its own limit
KEEP_DAYS = 7  # days of send records kept in the state dir
SECRETS_FILE = Path(__file__).resolve().parent / "secrets.sh"

EVENING = timedelta(hours=6)  # less than this left of the local day: cover the next 12 hours
NEXT_HOURS = timedelta(hours=12)
STEP = timedelta(hours=3)
RAIN_SHOWN = 0.3  # chance of precipitation at or above which the text mentions it
UMBRELLA = 0.5

SMS_GSM7_SINGLE = 160
SMS_GSM7_MULTI = 153
SMS_UCS2_SINGLE = 70
SMS_UCS2_MULTI = 67

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
# Which outcome wins when receivers fare differently: the one that needs a person most.
SEVERITY = (EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_CONFIG, EX_USAGE)

REQUIRED_ALWAYS = ("OPENWEATHER_API_KEY",)
REQUIRED_TO_SEND = (
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_SENDER_NUMBER",
    "TWILIO_RECEIVER_NUMBER",
)
SECRET_NAMES = ("OPENWEATHER_API_KEY", "TWILIO_AUTH_TOKEN")

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXT = frozenset("\f^{}\\[~]|€")  # each costs two septets (ESC + code)
# Look-alikes Twilio's Smart Encoding would also replace: curly quotes, acute, dashes.
GSM7_LOOKALIKES = {
    "\u2019": "'",
    "\u2018": "'",
    "\u00b4": "'",
    "`": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
}

US_ZIP = re.compile(r"^(\d{5})(?:-\d{4})?$")
COUNTRY = re.compile(r"^[A-Za-z]{2}$")
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
BARE_INTERNATIONAL = re.compile(r"^[1-9]\d{10,14}$")  # the tutorial's 15551234567 form

log = logging.getLogger(PROG)


# --- Errors -------------------------------------------------------------------------------


class WeatherTextError(Exception):
    """An expected failure: its message is one line for the user, its exit code documented."""

    exit_code = EX_SOFTWARE


class UsageError(WeatherTextError):
    exit_code = EX_USAGE


class ConfigError(WeatherTextError):
    exit_code = EX_CONFIG


class PermanentError(WeatherTextError):
    exit_code = EX_UNAVAILABLE


class TemporaryError(WeatherTextError):
    exit_code = EX_TEMPFAIL


# --- Data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    zip: str
    country: str

    @property
    def key(self) -> str:
        return f"{self.zip},{self.country}"


@dataclass(frozen=True)
class Config:
    api_key: str
    account_sid: str
    auth_token: str
    sender: str
    receivers: tuple[str, ...]
    openweather_url: str
    twilio_url: str
    state_dir: Path
    timeout: float

    def __repr__(self) -> str:  # keep secrets out of any repr that reaches a log
        return f"Config(receivers={len(self.receivers)}, state_dir={str(self.state_dir)!r})"


@dataclass(frozen=True)
class Place:
    name: str
    lat: float
    lon: float
    country: str


@dataclass(frozen=True)
class Reading:
    """Current weather: temperature, primary condition, and the zip's offset from UTC."""

    temp: float
    condition: str
    condition_id: int
    utc_offset: int  # seconds


@dataclass(frozen=True)
class Step:
    """One 3-hour step of the forecast, starting at `start` (unix UTC)."""

    start: int
    temp: float
    pop: float
    condition_id: int
    snow: bool


@dataclass(frozen=True)
class Outlook:
    """What the text says about the rest of the local day (or the next 12 hours)."""

    local_date: date
    label: str  # "Today" or "Next 12h"
    low: float
    high: float
    precip: str | None  # "rain" or "snow", when its chance is RAIN_SHOWN or more
    pop: float
    window: str  # local time window of the precipitation, "3-6pm"


@dataclass(frozen=True)
class SmsInfo:
    encoding: str  # "GSM-7" or "UCS-2"
    length: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


@dataclass(frozen=True)
class Report:
    """The text for one zip on one local day."""

    local_date: date
    body: str


@dataclass(frozen=True)
class Outcome:
    receiver: str
    exit_code: int
    message: str
    accepted: bool  # Twilio accepted the text: it is recorded as sent
    uncertain: bool = False  # Twilio may have accepted it: it must not be sent again blindly


# --- Functional core: parsing ---------------------------------------------------------------


def parse_location(zip_arg: str, country: str | None) -> Location:
    """Read ZIP (and --country, or the `E14,GB` form) into a Location; US zips are checked."""
    raw = zip_arg.strip()
    if "," in raw:
        raw, _, given = raw.partition(",")
        raw, given = raw.strip(), given.strip()
        if country and country.upper() != given.upper():
            raise UsageError(
                f"zip {zip_arg!r} names country {given!r} but --country says {country!r}. "
                "Give the country once."
            )
        country = given
    country = (country or "US").upper()
    if not COUNTRY.match(country):
        raise UsageError(f"{country!r} is not a country code. Use two letters, like US or GB.")
    if not raw:
        raise UsageError("the zip code is empty. Give one, like 94103.")
    if country == "US":
        match = US_ZIP.match(raw)
        if not match:
            raise UsageError(
                f"{raw!r} is not a US zip code. Use 5 digits (94103) or ZIP+4 (94103-1234); "
                "for another country add --country CC."
            )
        return Location(match.group(1), "US")
    return Location(raw.upper(), country)


def normalize_number(value: str, name: str) -> str:
    """Return `value` as E.164; the tutorial's `15551234567` form gets its `+`."""
    number = value.strip()
    if BARE_INTERNATIONAL.match(number):
        number = "+" + number
    if not E164.match(number):
        raise ConfigError(
            f"{name} {number[:20]!r} is not a phone number in E.164 form. "
            "Write it like +15551234567 (plus, country code, number; no spaces)."
        )
    return number


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("WEATHER_TEXT_STATE_DIR"):
        return Path(env["WEATHER_TEXT_STATE_DIR"]).expanduser()
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / PROG
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / PROG


def load_config(env: Mapping[str, str], *, sending: bool, receivers: Sequence[str] = ()) -> Config:
    """Build the Config from an environment mapping; list every missing variable at once."""
    needed = REQUIRED_ALWAYS + (REQUIRED_TO_SEND if sending else ())
    missing = [
        name
        for name in needed
        if not env.get(name, "").strip() and not (name == "TWILIO_RECEIVER_NUMBER" and receivers)
    ]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}. Set them in the environment or in secrets.sh "
            "(see secrets.sh.example)."
        )
    sender = ""
    receivers_out: tuple[str, ...] = ()
    if sending:
        sender = normalize_number(env["TWILIO_SENDER_NUMBER"], "TWILIO_SENDER_NUMBER")
        if receivers:
            receivers_out = tuple(normalize_number(r, "--to") for r in receivers)
        else:
            listed = [r for r in env["TWILIO_RECEIVER_NUMBER"].split(",") if r.strip()]
            receivers_out = tuple(normalize_number(r, "TWILIO_RECEIVER_NUMBER") for r in listed)
            if not receivers_out:
                raise ConfigError(
                    "TWILIO_RECEIVER_NUMBER lists no number. Give one, like +15558675310."
                )
    timeout_text = env.get("WEATHER_TEXT_TIMEOUT", "").strip() or str(DEFAULT_TIMEOUT)
    try:
        timeout = float(timeout_text)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 600:
        raise ConfigError(
            f"WEATHER_TEXT_TIMEOUT {timeout_text!r} is not a number of seconds. Use e.g. 10."
        )
    return Config(
        api_key=env["OPENWEATHER_API_KEY"].strip(),
        account_sid=env.get("TWILIO_ACCOUNT_SID", "").strip(),
        auth_token=env.get("TWILIO_AUTH_TOKEN", "").strip(),
        sender=sender,
        receivers=tuple(dict.fromkeys(receivers_out)),
        openweather_url=(env.get("OPENWEATHER_BASE_URL") or OPENWEATHER_BASE_URL).rstrip("/"),
        twilio_url=(env.get("TWILIO_BASE_URL") or TWILIO_BASE_URL).rstrip("/"),
        state_dir=default_state_dir(env),
        timeout=timeout,
    )


def _field(body: Any, what: str, *path: str | int) -> Any:
    """body[path...], or a clear TemporaryError naming the missing field."""
    value = body
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            dotted = ".".join(str(p) for p in path)
            raise TemporaryError(
                f"OpenWeather's answer for {what} has no {dotted}. "
                "Run again later; if it persists, the API has changed: please report it."
            ) from None
    return value


def _number(body: Any, what: str, *path: str | int) -> float:
    value = _field(body, what, *path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        dotted = ".".join(str(p) for p in path)
        raise TemporaryError(
            f"OpenWeather's answer for {what} has no number at {dotted}. Run again later."
        )
    return float(value)


def parse_geocode(body: Any) -> Place:
    return Place(
        name=str(_field(body, "the zip code", "name")),
        lat=_number(body, "the zip code", "lat"),
        lon=_number(body, "the zip code", "lon"),
        country=str(_field(body, "the zip code", "country")),
    )


def parse_current(body: Any) -> Reading:
    what = "current weather"
    return Reading(
        temp=_number(body, what, "main", "temp"),
        condition=str(_field(body, what, "weather", 0, "description")),
        condition_id=int(_number(body, what, "weather", 0, "id")),
        utc_offset=int(_number(body, what, "timezone")),
    )


def parse_forecast(body: Any) -> tuple[Step, ...]:
    what = "the forecast"
    entries = _field(body, what, "list")
    if not isinstance(entries, list):
        raise TemporaryError(f"OpenWeather's answer for {what} has no list. Run again later.")
    steps = []
    for entry in entries:
        pop = entry.get("pop", 0) if isinstance(entry, dict) else 0
        condition_id = int(_number(entry, what, "weather", 0, "id"))
        steps.append(
            Step(
                start=int(_number(entry, what, "dt")),
                temp=_number(entry, what, "main", "temp"),
                pop=float(pop) if isinstance(pop, int | float) else 0.0,
                condition_id=condition_id,
                snow=condition_id // 100 == 6 or "snow" in entry,
            )
        )
    return tuple(steps)


# --- Functional core: what the text says -----------------------------------------------------


def local_now(now: datetime, utc_offset: int) -> datetime:
    """The wall-clock time where the zip is (naive), from an aware `now` and the API's offset."""
    return (now.astimezone(timezone.utc) + timedelta(seconds=utc_offset)).replace(tzinfo=None)


def hour_label(moment: datetime) -> tuple[str, str]:
    """(hour, am/pm) of a local time: (3, pm) for 15:00, (12, am) for midnight."""
    hour = moment.hour % 12 or 12
    return str(hour), "am" if moment.hour < 12 else "pm"


def format_window(start: datetime, end: datetime) -> str:
    """A local time window in few characters: 3-6pm, 11am-2pm, 9pm-12am."""
    first, first_half = hour_label(start)
    last, last_half = hour_label(end)
    if first_half == last_half and end - start < timedelta(hours=12):
        return f"{first}-{last}{last_half}"
    return f"{first}{first_half}-{last}{last_half}"


def plan_outlook(reading: Reading, steps: Sequence[Step], now: datetime) -> Outlook:
    """The day's range and precipitation where the zip is, for the rest of its local day.

    `temp_min`/`temp_max` of current weather are a spread across a city at one moment, not
    the day's range: the range comes from the reading now and the forecast steps ahead.
    """
    here = local_now(now, reading.utc_offset)
    midnight = datetime.combine(here.date() + timedelta(days=1), datetime.min.time())
    if midnight - here < EVENING:
        label, end = "Next 12h", here + NEXT_HOURS
    else:
        label, end = "Today", midnight
    offset = timedelta(seconds=reading.utc_offset)
    ahead = []
    for step in steps:
        start = datetime.fromtimestamp(step.start, timezone.utc).replace(tzinfo=None) + offset
        if start + STEP > here and start < end:
            ahead.append((start, step))
    temps = [reading.temp] + [step.temp for start, step in ahead if start >= here]
    wet = [(start, step) for start, step in ahead if step.pop >= RAIN_SHOWN]
    precip, pop, window = None, 0.0, ""
    if wet:
        pop = max(step.pop for _, step in wet)
        precip = "snow" if any(step.snow for _, step in wet) else "rain"
        first = max(wet[0][0], here.replace(minute=0, second=0, microsecond=0))
        window = format_window(first, wet[-1][0] + STEP)
    return Outlook(here.date(), label, min(temps), max(temps), precip, pop, window)


def gsm7_septets(text: str) -> int | None:
    """Length of `text` in GSM-7 septets, or None when it needs UCS-2."""
    length = 0
    for char in text:
        if char in GSM7_BASIC:
            length += 1
        elif char in GSM7_EXT:
            length += 2
        else:
            return None
    return length


def sms_segments(text: str) -> SmsInfo:
    """Encoding, length and segment count, as Twilio counts them."""
    septets = gsm7_septets(text)
    if septets is not None:
        segments = 1 if septets <= SMS_GSM7_SINGLE else math.ceil(septets / SMS_GSM7_MULTI)
        return SmsInfo("GSM-7", septets, segments)
    units = len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= SMS_UCS2_SINGLE else math.ceil(units / SMS_UCS2_MULTI)
    return SmsInfo("UCS-2", units, segments)


def to_gsm7(text: str) -> str:
    """Keep `text` in GSM-7: accents dropped where GSM-7 lacks the letter, other signs removed."""
    out = []
    for char in text:
        if char in GSM7_BASIC and char not in "\r\n":
            out.append(char)
        elif char in GSM7_LOOKALIKES:
            out.append(GSM7_LOOKALIKES[char])
        elif char.isspace():
            out.append(" ")
        else:
            base = unicodedata.normalize("NFKD", char)
            out.extend(c for c in base if c in GSM7_BASIC and c not in "\r\n")
    return " ".join("".join(out).split())


def _temp(value: float, unit: str) -> str:
    return f"{round(value)}{unit}"


def format_hint(reading: Reading, outlook: Outlook, units: str) -> str | None:
    freezing, hot = (32, 90) if units == "imperial" else (0, 32)
    group = reading.condition_id // 100
    if outlook.precip == "snow" or group == 6:
        return "Snow: allow extra time."
    if outlook.pop >= UMBRELLA or group in (2, 3, 5):
        return "Take an umbrella."
    if outlook.low <= freezing:
        return "Freezing: dress warm."
    if outlook.high >= hot:
        return "Hot: drink water."
    return None


def format_message(place: str, reading: Reading, outlook: Outlook, units: str) -> str:
    """The SMS body: GSM-7, one segment, the lowest-priority parts dropped whole to fit.

    Priority: place; temperature and condition now; today's range; precipitation; a hint.
    """
    unit = "F" if units == "imperial" else "C"
    low, high = round(outlook.low), round(outlook.high)
    span = f"{low}-{high}{unit}" if low >= 0 else f"{low} to {high}{unit}"
    optional = [f"{outlook.label} {span}"]
    if outlook.precip:
        optional.append(f"{outlook.precip} {round(outlook.pop * 100)}% {outlook.window}")
    hint = format_hint(reading, outlook, units)
    condition = to_gsm7(reading.condition)
    name_words = to_gsm7(place).split() or ["Weather"]
    while True:
        head = f"{' '.join(name_words)}: {_temp(reading.temp, unit)}, {condition}."
        for keep in range(len(optional) + 1, -1, -1):
            parts = optional[:keep]
            text = head + (" " + ", ".join(parts) + "." if parts else "")
            if hint and keep > len(optional):
                text += " " + hint
            septets = gsm7_septets(text)
            if septets is not None and septets <= SMS_GSM7_SINGLE:
                return text
        # Even the head does not fit: a very long place name loses whole words from its end.
        if len(name_words) > 1:
            name_words = name_words[:-1]
        elif condition:
            condition = ""
        else:
            return head[:SMS_GSM7_SINGLE]


def mask_number(number: str) -> str:
    """+15551234567 -> +1******4567: enough to tell receivers apart in a log."""
    if len(number) < 8:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 6) + number[-4:]


def default_units(location: Location) -> str:
    return "imperial" if location.country == "US" else "metric"


def build_report(
    place: Place,
    reading: Reading,
    steps: Sequence[Step],
    units: str,
    now: datetime,
) -> Report:
    outlook = plan_outlook(reading, steps, now)
    body = format_message(place.name, reading, outlook, units)
    return Report(outlook.local_date, body)


def worst(codes: Sequence[int]) -> int:
    """The most serious exit code of several receivers' outcomes."""
    return max(codes, key=SEVERITY.index, default=EX_OK)


# --- Imperative shell: files and state ---------------------------------------------------------


def read_secrets_file(path: Path, *, required: bool) -> dict[str, str]:
    """Values of a `export KEY=value` file, parsed (never executed) by python-dotenv."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"secrets file {path} does not exist. Check --env-file.") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(
            f"cannot read secrets file {path}: {reason}. Check its path and permissions."
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"secrets file {path} line {binding.original.line} is not "
                "`export KEY=value`. Fix that line (see secrets.sh.example)."
            )
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning("secrets file %s is readable by group or others. Run: chmod 600 %s", path, path)
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def read_environment(env_file: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment, with values it lacks filled in from the secrets file."""
    if env_file:
        values = read_secrets_file(Path(env_file).expanduser(), required=True)
    else:
        values = read_secrets_file(SECRETS_FILE, required=False)
    return {**values, **{key: value for key, value in environ.items() if value}}


def _write_json_atomically(path: Path, data: Any) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class StateDir:
    """The small state kept between runs: the geocoding cache and who got today's text."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only  # --dry-run reads the cache but writes nothing
        self.geocode_file = path / "geocode.json"
        self.sent_file = path / "sent.json"
        self.lock_file = path / "lock"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("ignoring unreadable state file %s", path)
            return {}
        return data if isinstance(data, dict) else {}

    def _unwritable(self, exc: OSError) -> ConfigError:
        reason = exc.strerror or type(exc).__name__
        return ConfigError(
            f"cannot write the state dir {self.path}: {reason}. "
            "Set WEATHER_TEXT_STATE_DIR to a directory this user can write."
        )

    @contextlib.contextmanager
    def lock(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the run lock, so two overlapping runs never both send."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_file, "a")  # noqa: SIM115 - held for the whole run
        except OSError as exc:
            raise self._unwritable(exc) from None
        with handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TemporaryError(
                            f"another run still holds {self.lock_file} after {wait:.0f}s. "
                            "Run again later."
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def cached_place(self, location: Location) -> Place | None:
        entry = self._read(self.geocode_file).get(location.key)
        if not isinstance(entry, dict):
            return None
        try:
            return Place(
                str(entry["name"]), float(entry["lat"]), float(entry["lon"]), str(entry["country"])
            )
        except (KeyError, TypeError, ValueError):
            return None

    def cache_place(self, location: Location, place: Place) -> None:
        if self.read_only:
            return
        data = self._read(self.geocode_file)
        data[location.key] = {
            "name": place.name,
            "lat": place.lat,
            "lon": place.lon,
            "country": place.country,
        }
        try:
            _write_json_atomically(self.geocode_file, data)
        except OSError as exc:
            log.warning("could not cache the zip's coordinates: %s", exc.strerror)

    def sent(self, local_date: date, location: Location) -> set[str]:
        day = self._read(self.sent_file).get(local_date.isoformat(), {})
        return set(day.get(location.key, [])) if isinstance(day, dict) else set()

    def record_sent(self, local_date: date, location: Location, receiver: str) -> None:
        data = self._read(self.sent_file)
        day = data.setdefault(local_date.isoformat(), {})
        receivers = day.setdefault(location.key, [])
        if receiver not in receivers:
            receivers.append(receiver)
        for old in sorted(data)[:-KEEP_DAYS]:
            del data[old]
        try:
            _write_json_atomically(self.sent_file, data)
        except OSError as exc:
            raise ConfigError(
                f"the text to {mask_number(receiver)} went out, but recording it in "
                f"{self.sent_file} failed: {exc.strerror}. Fix the state dir before the next "
                "run, or it sends again."
            ) from None


# --- Imperative shell: OpenWeather ------------------------------------------------------------


def make_session(retry: Retry) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=SEND_WORKERS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def openweather_retry() -> Retry:
    """GETs are safe to repeat: retry connection errors, timeouts, 429 and 5xx."""
    return Retry(
        total=TRIES - 1,
        backoff_factor=BACKOFF_FACTOR,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        retry_after_max=RETRY_AFTER_MAX,
        raise_on_status=False,
    )


def fetch_json(
    session: requests.Session,
    config: Config,
    path: str,
    params: Mapping[str, str | float | int],
    what: str,
    location: Location,
) -> Any:
    """GET an OpenWeather endpoint; every failure becomes one line without the API key in it."""
    url = config.openweather_url + path
    try:
        response = session.get(
            url, params={**params, "appid": config.api_key}, timeout=config.timeout
        )
    except requests.exceptions.RequestException as exc:
        failure = network_failure(exc)
        if failure == "unreachable":
            problem = f"could not connect to OpenWeather at {config.openweather_url}"
        elif failure == "timeout":
            problem = f"OpenWeather did not answer within {config.timeout:g}s"
        else:
            problem = "the connection to OpenWeather broke"
        raise TemporaryError(
            f"{problem} ({what}, {TRIES} tries). Check the network; run again later."
        ) from None
    status = response.status_code
    if status == 401:
        raise PermanentError(
            "OpenWeather rejected the API key (HTTP 401). Check OPENWEATHER_API_KEY; "
            "a new key can take up to a couple of hours to become active."
        )
    if status == 404:
        raise PermanentError(
            f"OpenWeather does not know zip {location.zip} in {location.country} (HTTP 404). "
            "Check the zip code, or give its country with --country CC."
        )
    if status == 429:
        raise TemporaryError(
            f"OpenWeather is rate-limiting this API key (HTTP 429) after {TRIES} tries. "
            "Run again later (the free plan allows 60 calls a minute)."
        )
    if status >= 500:
        raise TemporaryError(
            f"OpenWeather is failing (HTTP {status}) for {what}, {TRIES} tries. Run again later."
        )
    if status != 200:
        raise PermanentError(
            f"OpenWeather refused the request for {what} (HTTP {status}: "
            f"{_api_message(response)}). Check the zip code and --country."
        )
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise TemporaryError(
            f"OpenWeather sent a malformed answer for {what} ({kind}, not JSON). Run again later."
        ) from None


def _api_message(response: requests.Response) -> str:
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return to_gsm7(str(message))[:120] if message else "no message"


def fetch_place(
    session: requests.Session,
    config: Config,
    location: Location,
    state: StateDir | None,
) -> Place:
    """The zip's name and coordinates: from the cache, else from the geocoding API (cached)."""
    if state is not None and (cached := state.cached_place(location)) is not None:
        return cached
    body = fetch_json(
        session, config, "/geo/1.0/zip", {"zip": location.key}, "the zip code", location
    )
    place = parse_geocode(body)
    if state is not None:
        state.cache_place(location, place)
    return place


def fetch_weather(
    session: requests.Session,
    config: Config,
    location: Location,
    place: Place,
    units: str,
) -> tuple[Reading, tuple[Step, ...]]:
    """Current weather and the forecast, asked concurrently: one round trip, not two."""
    where: dict[str, str | float | int] = {"lat": place.lat, "lon": place.lon, "units": units}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        current = pool.submit(
            fetch_json, session, config, "/data/2.5/weather", where, "current weather", location
        )
        forecast = pool.submit(
            fetch_json,
            session,
            config,
            "/data/2.5/forecast",
            {**where, "cnt": FORECAST_STEPS},
            "the forecast",
            location,
        )
        return parse_current(current.result()), parse_forecast(forecast.result())


def prepare_report(
    config: Config,
    location: Location,
    units: str,
    state: StateDir | None,
) -> Report:
    """Everything up to the text: the place, the weather, and the body for today there."""
    with make_session(openweather_retry()) as session:
        place = fetch_place(session, config, location, state)
        reading, steps = fetch_weather(session, config, location, place, units)
    return build_report(place, reading, steps, units, datetime.now(timezone.utc))


# --- Imperative shell: Twilio ------------------------------------------------------------------


def twilio_retry() -> Retry:
    """A Twilio POST is not idempotent: retry only what Twilio cannot have processed.

    That is a refused connection (connect errors), and 429 or 503, which Twilio answers
    without creating a message. A read timeout or another 5xx may follow a message that
    went out, so those are never retried (read=0, 500/502/504 not in the list).
    """
    return Retry(
        total=TRIES - 1,
        connect=TRIES - 1,
        read=0,
        other=0,
        status=TRIES - 1,
        backoff_factor=BACKOFF_FACTOR,
        status_forcelist=(429, 503),
        allowed_methods=frozenset({"POST"}),
        respect_retry_after_header=True,
        retry_after_max=RETRY_AFTER_MAX,
        raise_on_status=False,
    )


def make_twilio_client(config: Config) -> Client:
    """The real Twilio client, with a timeout on every request and the safe retries above."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    http_client = TwilioHttpClient(timeout=config.timeout)
    adapter = HTTPAdapter(max_retries=twilio_retry(), pool_maxsize=SEND_WORKERS)
    assert http_client.session is not None  # pool_connections=True keeps one session
    http_client.session.mount("https://", adapter)
    http_client.session.mount("http://", adapter)
    client = Client(config.account_sid, config.auth_token, http_client=http_client)
    if config.twilio_url != TWILIO_BASE_URL:
        client.api.base_url = config.twilio_url
        # TWILIO_REGION/TWILIO_EDGE would rewrite the host of a moved base URL too.
        client.edge = client.region = None
    return client


TWILIO_FIXES = {
    20003: (
        "Twilio rejected the credentials (20003). "
        "Check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN in the Twilio console."
    ),
    21211: "Twilio says {to} is not a valid phone number (21211). Check TWILIO_RECEIVER_NUMBER.",
    21614: "Twilio says {to} is not a mobile number (21614). Give a number that gets SMS.",
    21212: (
        "Twilio says the sender {sender} is not a number of this account (21212). "
        "Check TWILIO_SENDER_NUMBER."
    ),
    21606: (
        "Twilio says the sender {sender} cannot send SMS (21606). Set TWILIO_SENDER_NUMBER "
        "to an SMS-capable number of this account."
    ),
    21608: (
        "Twilio refused {to}: a trial account only texts verified numbers (21608). "
        "Verify the number in the Twilio console, or upgrade the account."
    ),
    21610: (
        "Twilio refused {to}: that number replied STOP (21610). "
        "It gets texts again only after it texts START to your number."
    ),
    21408: (
        "Twilio refused {to}: SMS to that country is not enabled (21408). "
        "Enable it in the console under Messaging > Settings > Geo permissions."
    ),
}


def send_text(client: Client, sender: str, receiver: str, body: str) -> Outcome:
    """Send one SMS and say what happened; never raises for an expected failure."""
    from twilio.base.exceptions import (
        TwilioException,
        TwilioRestException,
        TwilioServiceException,
    )

    to = mask_number(receiver)
    maybe = (
        f"the text to {to} may or may not have gone out. Check the Twilio console's "
        "message log before running again with --force."
    )
    try:
        message = client.messages.create(to=receiver, from_=sender, body=body)
    except (TwilioRestException, TwilioServiceException) as exc:
        return _refusal(exc.status, exc.code, _twilio_text(exc), receiver, sender)
    except TwilioException:
        return Outcome(receiver, EX_TEMPFAIL, f"Twilio failed: {maybe}", False, uncertain=True)
    except requests.exceptions.RequestException as exc:
        failure = network_failure(exc)
        if failure == "unreachable":
            text = (
                f"could not connect to Twilio at {client.api.base_url} ({TRIES} tries); "
                f"nothing was sent to {to}. Check the network; run again later."
            )
        elif failure == "timeout":
            text = f"Twilio did not answer within {client.http_client.timeout:g}s: {maybe}"
        else:
            text = f"the connection to Twilio broke: {maybe}"
        return Outcome(receiver, EX_TEMPFAIL, text, False, uncertain=failure != "unreachable")
    except ValueError:
        # Only a 2xx reaches JSON parsing unguarded: Twilio accepted the text.
        return Outcome(
            receiver,
            EX_OK,
            f"sent to {to}, but Twilio's answer could not be read (no SID)",
            accepted=True,
        )
    if not message.sid:
        return Outcome(receiver, EX_OK, f"sent to {to} (Twilio gave no SID)", accepted=True)
    segments = message.num_segments or "?"
    plural = "" if segments == "1" else "s"
    return Outcome(
        receiver, EX_OK, f"sent {message.sid} to {to} ({segments} segment{plural})", accepted=True
    )


def _twilio_text(exc: Any) -> str:
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or ""
    return to_gsm7(str(text).removeprefix("Unable to create record: "))[:200]


def _refusal(status: int, code: int | None, text: str, receiver: str, sender: str) -> Outcome:
    to = mask_number(receiver)
    if status in (429, 503):
        return Outcome(
            receiver,
            EX_TEMPFAIL,
            f"Twilio is busy (HTTP {status}) after {TRIES} "
            f"tries; nothing was sent to {to}. Run again later.",
            accepted=False,
        )
    if status >= 500:
        return Outcome(
            receiver,
            EX_TEMPFAIL,
            f"Twilio failed (HTTP {status}): the text to {to} may or may not have gone out. "
            "Check the Twilio console's message log before running again with --force.",
            accepted=False,
            uncertain=True,
        )
    if code in TWILIO_FIXES:
        fix = TWILIO_FIXES[code].format(to=to, sender=mask_number(sender))
        return Outcome(receiver, EX_UNAVAILABLE, fix, accepted=False)
    link = f" https://www.twilio.com/docs/errors/{code}" if code else ""
    return Outcome(
        receiver,
        EX_UNAVAILABLE,
        f"Twilio refused the text to {to} (HTTP {status}, "
        f"code {code}: {text or 'no message'}).{link}",
        accepted=False,
    )


def network_failure(exc: requests.exceptions.RequestException) -> str:
    """Why a request failed: "unreachable" (nothing was sent), "timeout", or "broken".

    requests wraps urllib3's errors, and once retries run out, in a MaxRetryError too.
    """
    from urllib3.exceptions import (
        ConnectTimeoutError,
        MaxRetryError,
        NewConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "unreachable"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "timeout"
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    if isinstance(reason, NewConnectionError | ConnectTimeoutError):
        return "unreachable"
    if isinstance(reason, ReadTimeoutError):
        return "timeout"
    return "broken"


def send_all(
    client: Client,
    sender: str,
    receivers: Sequence[str],
    body: str,
    on_accepted: Callable[[str], None],
) -> list[Outcome]:
    """One message per receiver, sent concurrently; `on_accepted` runs as each is accepted."""
    outcomes = []
    workers = max(1, min(SEND_WORKERS, len(receivers)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(send_text, client, sender, r, body) for r in receivers]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            if outcome.accepted:
                try:
                    on_accepted(outcome.receiver)
                except WeatherTextError as exc:  # keep recording the others
                    outcome = Outcome(outcome.receiver, exc.exit_code, str(exc), accepted=True)
            outcomes.append(outcome)
    return outcomes


# --- The command line ---------------------------------------------------------------------------


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, through main
        raise UsageError(f"{message}. See --help.")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every front end shares: where, in what units, to whom, and how loudly."""
    parser.add_argument("--country", metavar="CC", help="country of the zip (default US)")
    parser.add_argument(
        "--units",
        choices=("imperial", "metric"),
        help="default: imperial for US zips, metric elsewhere",
    )
    parser.add_argument(
        "--to",
        metavar="NUMBER",
        action="append",
        default=[],
        help="send to NUMBER instead of TWILIO_RECEIVER_NUMBER (repeatable)",
    )
    parser.add_argument(
        "--env-file", metavar="PATH", help="read missing settings from PATH instead of secrets.sh"
    )
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    chatter.add_argument("-v", "--verbose", action="store_true", help="say more")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = UsageParser(
        prog="weather_text.py",
        description="Text today's weather for a zipcode by SMS, once a day.",
        epilog=doc[doc.index("Environment") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("zip", metavar="ZIP", help="zip code: 94103, 94103-1234, or E14,GB")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the text on stdout; send and record nothing"
    )
    parser.add_argument(
        "--force", action="store_true", help="send even to receivers who got today's text already"
    )
    add_run_options(parser)
    return parser


class _Formatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        return f"{stamp} {self.prog}: {level}{record.getMessage()}"


class _Redact(logging.Filter):
    """Belt and braces: no secret value reaches stderr even if a message carried one."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "********")
        record.msg, record.args = text, ()
        return True


def _our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_weather_text", False)]


def setup_logging(quiet: bool, verbose: bool, prog: str = PROG) -> None:
    """Timestamped lines on stderr, for cron logs; nothing at import time."""
    root = logging.getLogger()
    for old in _our_handlers():
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(prog))
    handler._weather_text = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    # urllib3 logs retried URLs, appid included; twilio logs each request at INFO.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("twilio").setLevel(logging.WARNING)


def redact_secrets(env: Mapping[str, str]) -> None:
    """From now on, mask the values of the secrets in `env` in every line we log."""
    for handler in _our_handlers():
        for old in [f for f in handler.filters if isinstance(f, _Redact)]:
            handler.removeFilter(old)  # run_schedule calls this every morning: replace, not pile up
        handler.addFilter(_Redact([env.get(name, "") for name in SECRET_NAMES]))


def send_morning_text(
    config: Config, location: Location, units: str, *, force: bool = False
) -> int:
    """The whole job: today's text for one zip to every receiver who has not had it yet."""
    state = StateDir(config.state_dir)
    with state.lock():
        report = prepare_report(config, location, units, state)
        done = set() if force else state.sent(report.local_date, location)
        for receiver in config.receivers:
            if receiver in done:
                log.info(
                    "already sent today (%s) to %s; --force to send again",
                    report.local_date,
                    mask_number(receiver),
                )
        pending = [r for r in config.receivers if r not in done]
        if not pending:
            return EX_OK
        log.debug("text: %s", report.body)
        outcomes = send_all(
            make_twilio_client(config),
            config.sender,
            pending,
            report.body,
            lambda receiver: state.record_sent(report.local_date, location, receiver),
        )
    for outcome in outcomes:
        if outcome.exit_code == EX_OK:
            log.info("%s", outcome.message)
        else:
            log.error("%s", outcome.message)
    return worst([o.exit_code for o in outcomes])


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str], *, sending: bool
) -> tuple[Config, Location, str]:
    """The Config, Location and units that the shared command-line options describe."""
    location = parse_location(args.zip, args.country)
    env = read_environment(args.env_file, environ)
    redact_secrets(env)
    config = load_config(env, sending=sending, receivers=args.to)
    return config, location, args.units or default_units(location)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config, location, units = settings_from_args(args, environ, sending=not args.dry_run)
    if not args.dry_run:
        return send_morning_text(config, location, units, force=args.force)
    state = StateDir(config.state_dir, read_only=True)
    report = prepare_report(config, location, units, state)
    info = sms_segments(report.body)
    print(report.body)
    plural = "" if info.segments == 1 else "s"
    log.info("%d characters, %s, %d segment%s", info.length, info.encoding, info.segments, plural)
    return EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    setup_logging(args.quiet, args.verbose)
    try:
        return run(args, os.environ)
    except WeatherTextError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted. Texts already accepted are recorded; run again to finish.")
        return EX_TEMPFAIL
    except Exception as exc:  # a bug: say so in one line, the traceback only with -v
        log.error(
            "internal error (%s). Please report it; run with -v for details.", type(exc).__name__
        )
        log.debug("%s", traceback.format_exc().rstrip())
        return EX_SOFTWARE


if __name__ == "__main__":
    raise SystemExit(main())
