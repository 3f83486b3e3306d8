"""The functional core: parsing, "today" where the zip is, and the text itself."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import weather_text as wt
from weather_text import Outlook, Reading, Step

# --- zip codes and phone numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("zip_arg", "country", "expected"),
    [
        ("94103", None, "94103,US"),
        ("02135", None, "02135,US"),  # a string: the leading zero stays
        ("94103-1234", None, "94103,US"),  # ZIP+4: the +4 is dropped
        (" 94103 ", None, "94103,US"),
        ("E14,GB", None, "E14,GB"),
        ("e14", "gb", "E14,GB"),
        ("E14, GB", "GB", "E14,GB"),
        ("1000-001", "PT", "1000-001,PT"),
    ],
)
def test_parse_location_accepts(zip_arg: str, country: str | None, expected: str) -> None:
    assert wt.parse_location(zip_arg, country).key == expected


@pytest.mark.parametrize(
    ("zip_arg", "country", "message"),
    [
        ("abc", None, "'abc' is not a US zip code. Use 5 digits (94103) or ZIP+4"),
        ("9410", None, "'9410' is not a US zip code."),
        ("941031", None, "'941031' is not a US zip code."),
        ("94103-12", None, "'94103-12' is not a US zip code."),
        ("", None, "the zip code is empty. Give one, like 94103."),
        ("E14,GB", "US", "zip 'E14,GB' names country 'GB' but --country says 'US'."),
        ("E14", "GBR", "'GBR' is not a country code. Use two letters, like US or GB."),
    ],
)
def test_parse_location_rejects_with_a_usage_error(
    zip_arg: str, country: str | None, message: str
) -> None:
    with pytest.raises(wt.UsageError) as error:
        wt.parse_location(zip_arg, country)
    assert message in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+15551234567", "+15551234567"),
        ("15551234567", "+15551234567"),  # the tutorial's form
        (" +447911123456 ", "+447911123456"),
        ("447911123456", "+447911123456"),
    ],
)
def test_normalize_number_gives_e164(value: str, expected: str) -> None:
    assert wt.normalize_number(value, "TWILIO_RECEIVER_NUMBER") == expected


@pytest.mark.parametrize(
    "value", ["5551234567", "+1 555 123 4567", "(555) 123-4567", "+0123456789", "abc", "+"]
)
def test_normalize_number_rejects_and_names_the_variable(value: str) -> None:
    with pytest.raises(wt.ConfigError) as error:
        wt.normalize_number(value, "TWILIO_SENDER_NUMBER")
    assert str(error.value).startswith("TWILIO_SENDER_NUMBER ")
    assert "is not a phone number in E.164 form. Write it like +15551234567" in str(error.value)
    assert error.value.exit_code == 78


def test_mask_number_keeps_country_code_and_last_four() -> None:
    assert wt.mask_number("+15551234567") == "+1******4567"
    assert wt.mask_number("+447911123456") == "+4*******3456"


# --- configuration -----------------------------------------------------------------------------

FULL = {
    "OPENWEATHER_API_KEY": "k" * 32,
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "t" * 32,
    "TWILIO_SENDER_NUMBER": "15005550006",
    "TWILIO_RECEIVER_NUMBER": "+15558675310, 15558675311,+15558675310",
    "HOME": "/home/you",
}


def test_load_config_lists_every_missing_variable_in_one_error() -> None:
    with pytest.raises(wt.ConfigError) as error:
        wt.load_config({"TWILIO_AUTH_TOKEN": "x"}, sending=True)
    assert str(error.value) == (
        "missing OPENWEATHER_API_KEY, TWILIO_ACCOUNT_SID, TWILIO_SENDER_NUMBER, "
        "TWILIO_RECEIVER_NUMBER. Set them in the environment or in secrets.sh "
        "(see secrets.sh.example)."
    )


def test_load_config_for_a_dry_run_needs_only_the_openweather_key() -> None:
    config = wt.load_config({"OPENWEATHER_API_KEY": "k"}, sending=False)
    assert config.receivers == ()


def test_load_config_normalizes_and_dedupes_receivers() -> None:
    config = wt.load_config(FULL, sending=True)
    assert config.sender == "+15005550006"
    assert config.receivers == ("+15558675310", "+15558675311")


def test_a_receiver_list_of_only_commas_is_a_configuration_error() -> None:
    with pytest.raises(wt.ConfigError, match="TWILIO_RECEIVER_NUMBER lists no number"):
        wt.load_config({**FULL, "TWILIO_RECEIVER_NUMBER": " , ,"}, sending=True)


def test_to_replaces_the_receiver_list_and_may_stand_in_for_it() -> None:
    env = {k: v for k, v in FULL.items() if k != "TWILIO_RECEIVER_NUMBER"}
    assert wt.load_config(env, sending=True, receivers=["+15550001111"]).receivers == (
        "+15550001111",
    )


def test_config_repr_shows_no_secret() -> None:
    text = repr(wt.load_config(FULL, sending=True))
    assert "k" * 32 not in text and "t" * 32 not in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WEATHER_TEXT_STATE_DIR": "/srv/wt", "HOME": "/home/you"}, "/srv/wt"),
        (
            {"XDG_STATE_HOME": "/home/you/.state", "HOME": "/home/you"},
            "/home/you/.state/weather_text",
        ),
        ({"HOME": "/home/you"}, "/home/you/.local/state/weather_text"),
    ],
)
def test_state_dir_defaults(env: dict[str, str], expected: str) -> None:
    assert wt.default_state_dir(env) == Path(expected)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "601"])
def test_a_bad_timeout_is_a_configuration_error(value: str) -> None:
    with pytest.raises(wt.ConfigError, match="WEATHER_TEXT_TIMEOUT"):
        wt.load_config({**FULL, "WEATHER_TEXT_TIMEOUT": value}, sending=True)


# --- "today" where the zip is -------------------------------------------------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def steps_from(start: datetime, temps: list[float], pops: list[float] | None = None) -> list[Step]:
    pops = pops or [0.0] * len(temps)
    return [
        Step(int((start + timedelta(hours=3 * i)).timestamp()), t, p, 800, False)
        for i, (t, p) in enumerate(zip(temps, pops, strict=True))
    ]


def test_today_is_the_zips_calendar_day_at_utc_plus_14() -> None:
    # 11:00 UTC on Dec 4 is 01:00 on Dec 5 in Kiritimati: "today" there is Dec 5, until
    # 10:00 UTC on Dec 5. A hot step after that local midnight is tomorrow, not today.
    now = utc("2026-12-04T11:00:00")
    reading = Reading(27.0, "clear sky", 800, 14 * 3600)
    # Steps from 12:00 UTC Dec 4 to 09:00 UTC Dec 5 are today; 12:00 and 15:00 are not.
    steps = steps_from(utc("2026-12-04T12:00:00"), [26, 28, 30, 29, 27, 26, 25, 24, 40, 41])
    outlook = wt.plan_outlook(reading, steps, now)
    assert outlook.local_date == date(2026, 12, 5)
    assert (outlook.label, outlook.low, outlook.high) == ("Today", 24, 30)


def test_today_is_the_zips_calendar_day_at_utc_minus_10() -> None:
    # 17:00 UTC on Dec 4 is 07:00 on Dec 4 in Honolulu; its day ends at 10:00 UTC on Dec 5.
    now = utc("2026-12-04T17:00:00")
    reading = Reading(70.0, "few clouds", 801, -10 * 3600)
    steps = steps_from(utc("2026-12-04T18:00:00"), [72, 80, 78, 74, 71, 69, 50, 51])
    outlook = wt.plan_outlook(reading, steps, now)
    assert outlook.local_date == date(2026, 12, 4)
    assert (outlook.low, outlook.high) == (69, 80)


def test_the_days_range_ignores_current_temp_min_and_max() -> None:
    # Only the reading now and the forecast steps count: Reading has no temp_min/temp_max.
    now = utc("2026-06-01T14:00:00")  # 07:00 in California
    reading = Reading(55.0, "light rain", 500, -7 * 3600)
    # Local 08:00 to 23:00 are today; the 02:00 step (40) is tomorrow.
    steps = steps_from(utc("2026-06-01T15:00:00"), [57, 61, 63, 60, 52, 51, 40])
    outlook = wt.plan_outlook(reading, steps, now)
    assert (outlook.low, outlook.high) == (51, 63)


def test_an_evening_run_covers_the_next_12_hours_and_says_so() -> None:
    now = utc("2026-12-04T20:00:00")  # 20:00 in London
    reading = Reading(8.0, "overcast clouds", 804, 0)
    steps = steps_from(utc("2026-12-04T21:00:00"), [7, 5, 3, 2, 4, 9], [0, 0, 0, 0.6, 0, 0])
    outlook = wt.plan_outlook(reading, steps, now)
    assert outlook.label == "Next 12h"
    assert outlook.local_date == date(2026, 12, 4)
    assert (outlook.low, outlook.high) == (2, 8)  # 21:00 to 06:00; 09:00 is past 12 hours
    assert (outlook.precip, outlook.window) == ("rain", "6-9am")


def test_precipitation_window_is_in_local_time() -> None:
    now = utc("2026-06-01T14:00:00")  # 07:00 in California (UTC-7)
    reading = Reading(55.0, "light rain", 500, -7 * 3600)
    pops = [0.1, 0.2, 0.3, 0.7, 0.1, 0.0]
    steps = steps_from(utc("2026-06-01T15:00:00"), [57, 61, 63, 60, 51, 50], pops)
    outlook = wt.plan_outlook(reading, steps, now)
    # Steps at 14:00 and 17:00 local (21:00, 00:00 UTC): the window is 2-8pm, 70% at most.
    assert (outlook.precip, outlook.pop, outlook.window) == ("rain", 0.7, "2-8pm")


def test_snow_in_the_window_is_called_snow() -> None:
    now = utc("2026-01-10T12:00:00")
    reading = Reading(-3.0, "overcast clouds", 804, 0)
    steps = [Step(int(utc("2026-01-10T15:00:00").timestamp()), -4.0, 0.8, 601, True)]
    outlook = wt.plan_outlook(reading, steps, now)
    assert (outlook.precip, outlook.window) == ("snow", "3-6pm")


def test_a_low_chance_of_rain_is_not_mentioned() -> None:
    now = utc("2026-06-01T14:00:00")
    reading = Reading(55.0, "clear sky", 800, -7 * 3600)
    steps = steps_from(utc("2026-06-01T15:00:00"), [57, 61], [0.29, 0.1])
    assert wt.plan_outlook(reading, steps, now).precip is None


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("15:00", "18:00", "3-6pm"),
        ("11:00", "14:00", "11am-2pm"),
        ("21:00", "00:00", "9pm-12am"),
        ("00:00", "03:00", "12-3am"),
        ("06:00", "21:00", "6am-9pm"),
    ],
)
def test_format_window(start: str, end: str, expected: str) -> None:
    day = "2026-12-04T"
    first = datetime.fromisoformat(day + start)
    last = datetime.fromisoformat(day + end)
    if last <= first:
        last += timedelta(days=1)
    assert wt.format_window(first, last) == expected


# --- the message ------------------------------------------------------------------------------

DAY = date(2026, 12, 4)


def test_the_example_text() -> None:
    reading = Reading(55.2, "light rain", 500, -8 * 3600)
    outlook = Outlook(DAY, "Today", 51, 63, "rain", 0.7, "3-6pm")
    assert wt.format_message("San Francisco", reading, outlook, "imperial") == (
        "San Francisco: 55F, light rain. Today 51-63F, rain 70% 3-6pm. Take an umbrella."
    )


@pytest.mark.parametrize(
    ("reading", "outlook", "units", "expected"),
    [
        (
            Reading(-3.4, "light snow", 600, 0),
            Outlook(DAY, "Today", -6, -1, "snow", 0.9, "6-9pm"),
            "metric",
            "Oslo: -3C, light snow. Today -6 to -1C, snow 90% 6-9pm. Snow: allow extra time.",
        ),
        (
            Reading(20.0, "clear sky", 800, 0),
            Outlook(DAY, "Today", 18, 28, None, 0.1, ""),
            "imperial",
            "Oslo: 20F, clear sky. Today 18-28F. Freezing: dress warm.",
        ),
        (
            Reading(95.0, "clear sky", 800, 0),
            Outlook(DAY, "Today", 80, 101, None, 0.0, ""),
            "imperial",
            "Oslo: 95F, clear sky. Today 80-101F. Hot: drink water.",
        ),
        (
            Reading(12.0, "broken clouds", 803, 0),
            Outlook(DAY, "Next 12h", 9, 12, "rain", 0.4, "2-5am"),
            "metric",
            "Oslo: 12C, broken clouds. Next 12h 9-12C, rain 40% 2-5am.",
        ),
    ],
)
def test_format_message(reading: Reading, outlook: Outlook, units: str, expected: str) -> None:
    assert wt.format_message("Oslo", reading, outlook, units) == expected


def test_no_degree_sign_and_no_accents_outside_gsm7() -> None:
    reading = Reading(21.0, "ciel dégagé°", 800, 0)
    outlook = Outlook(DAY, "Today", 15, 24, None, 0, "")
    text = wt.format_message("Kraków \u2013 Śródmieście", reading, outlook, "metric")
    assert text == "Krakow - Srodmiescie: 21C, ciel dégagé. Today 15-24C."
    assert wt.sms_segments(text).encoding == "GSM-7"


def test_parts_are_dropped_whole_from_the_lowest_priority() -> None:
    reading = Reading(55.0, "thunderstorm with heavy drizzle", 232, 0)
    outlook = Outlook(DAY, "Today", 51, 63, "rain", 0.7, "11am-2pm")
    tail = " Today 51-63F, rain 70% 11am-2pm. Take an umbrella."
    for name_length, expected_tail in [
        (60, tail),
        (80, " Today 51-63F, rain 70% 11am-2pm."),  # the hint goes first
        (100, " Today 51-63F."),  # then the chance of rain
        (120, ""),  # then the day's range
    ]:
        name = " ".join(["Place"] * (name_length // 6))
        text = wt.format_message(name, reading, outlook, "imperial")
        assert text == f"{name}: 55F, thunderstorm with heavy drizzle.{expected_tail}"
        assert len(text) <= 160


def test_a_place_name_too_long_for_the_text_loses_whole_words() -> None:
    reading = Reading(55.0, "clear sky", 800, 0)
    outlook = Outlook(DAY, "Today", 51, 63, None, 0, "")
    name = " ".join(f"Word{i}" for i in range(40))
    text = wt.format_message(name, reading, outlook, "imperial")
    assert len(text) <= 160
    kept = text.split(": ")[0].split()
    assert kept == name.split()[: len(kept)]


@pytest.mark.parametrize(
    ("text", "encoding", "length", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("€" * 80, "GSM-7", 160, 1),  # escape characters cost two septets
        ("€" * 81, "GSM-7", 162, 2),
        ("°" + "a" * 69, "UCS-2", 70, 1),
        ("°" + "a" * 70, "UCS-2", 71, 2),
        ("a" * 152 + "°", "UCS-2", 153, 3),  # Twilio's own example: three messages
        ("🌞" * 35, "UCS-2", 70, 1),
    ],
)
def test_sms_segments(text: str, encoding: str, length: int, segments: int) -> None:
    assert wt.sms_segments(text) == wt.SmsInfo(encoding, length, segments)


word = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=25)
place_names = st.lists(word, min_size=0, max_size=10).map(" ".join)
conditions = st.sampled_from(
    ["clear sky", "light rain", "thunderstorm with heavy drizzle", "smoke", "ciel dégagé", ""]
) | st.text(max_size=40)


@given(
    name=place_names,
    condition=conditions,
    condition_id=st.sampled_from([200, 232, 300, 500, 511, 600, 622, 701, 781, 800, 804]),
    temps=st.lists(st.floats(-90, 140, allow_nan=False), min_size=3, max_size=3),
    precip=st.sampled_from([None, "rain", "snow"]),
    pop=st.floats(0, 1),
    window=st.sampled_from(["", "3-6pm", "11am-2pm", "9pm-12am"]),
    label=st.sampled_from(["Today", "Next 12h"]),
    units=st.sampled_from(["imperial", "metric"]),
)
def test_any_weather_makes_one_gsm7_segment(
    name, condition, condition_id, temps, precip, pop, window, label, units
) -> None:
    now, low, high = temps[0], min(temps), max(temps)
    reading = Reading(now, condition, condition_id, 0)
    text = wt.format_message(
        name, reading, Outlook(DAY, label, low, high, precip, pop, window), units
    )
    info = wt.sms_segments(text)
    assert (info.encoding, info.segments) == ("GSM-7", 1)
    assert info.length <= 160
    clean = wt.to_gsm7(name).split()
    if ":" not in "".join(clean) and clean:
        kept = text.split(": ")[0].split()
        assert kept == clean[: len(kept)]  # never cut mid-word


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0], 0), ([0, 75], 75), ([75, 69, 0], 69), ([78, 69], 78), ([], 0)],
)
def test_the_most_serious_outcome_wins(codes: list[int], expected: int) -> None:
    assert wt.worst(codes) == expected


# --- parsing OpenWeather's answers ---------------------------------------------------------------


def test_parse_current_reads_the_primary_condition_and_offset() -> None:
    from tests.standins import fixture

    reading = wt.parse_current(fixture("openweather/current_weather_zip_us_recorded.json"))
    assert reading == Reading(274.34, "mist", 701, -18000)


def test_parse_forecast_reads_steps_and_chance_of_rain() -> None:
    from tests.standins import fixture

    steps = wt.parse_forecast(fixture("openweather/forecast.json"))
    assert [s.pop for s in steps] == [0.32, 0.33, 0.7, 0]
    assert steps[0] == Step(1661871600, 296.76, 0.32, 500, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"weather": [{"id": 800, "description": "x"}], "timezone": 0}, "has no main.temp"),
        ({"main": {"temp": 1}, "weather": [], "timezone": 0}, "has no weather.0.description"),
        (
            {"main": {"temp": "hot"}, "weather": [{"id": 1, "description": "x"}], "timezone": 0},
            "has no number at main.temp",
        ),
        ([], "has no main.temp"),
    ],
)
def test_incomplete_current_weather_is_a_clear_temporary_error(body: object, message: str) -> None:
    with pytest.raises(wt.TemporaryError, match=message) as error:
        wt.parse_current(body)
    assert error.value.exit_code == 75
