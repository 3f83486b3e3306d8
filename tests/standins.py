"""Local stand-ins of the OpenWeather and Twilio APIs: for the tests, the demo and the benchmark.

They speak HTTP on 127.0.0.1 like the real services, from bodies recorded from them
(`tests/fixtures/`): OpenWeather's re-timed to the clock and converted to the units asked,
Twilio's with the message that was posted. Any request can be made to fail on purpose with
`fail(path, Reply(...), ...)`.

    python tests/standins.py demo [ZIP]   run weather_text.py against them, show the text sent
    python tests/standins.py serve        run them until Ctrl-C, printing the settings to use
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent

API_KEY = "ow-standin-key-0123456789abcdef"
ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "tw-standin-token-fedcba9876543210"
SENDER = "+15005550006"
RECEIVER = "+15558675310"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@dataclass
class Reply:
    """One scripted answer: a status and body, or a hang (`delay`), or a dropped connection."""

    status: int = 200
    body: Any = b""  # bytes, str, or anything JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # a client that hung up is normal


class StandIn:
    """An HTTP server on a free loopback port that records every request it gets."""

    name = "stand-in"

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[Seen] = []
        self._faults: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, path: str, *replies: Reply) -> None:
        """Answer the next requests whose path starts with `path` with `replies`, in order."""
        with self._lock:
            self._faults.setdefault(path, deque()).extend(replies)

    def count(self, path: str = "/", method: str | None = None) -> int:
        return sum(
            1 for r in self.requests if r.path.startswith(path) and method in (None, r.method)
        )

    def answer(self, seen: Seen) -> Reply:
        raise NotImplementedError

    def _scripted(self, path: str) -> Reply | None:
        with self._lock:
            for prefix, queue in self._faults.items():
                if path.startswith(prefix) and queue:
                    return queue.popleft()
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        seen = Seen(
            handler.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            dict(parse_qsl(raw)),
            dict(handler.headers.items()),
        )
        with self._lock:
            self.requests.append(seen)
        reply = self._scripted(parts.path) or self.answer(seen)
        time.sleep(self.latency + reply.delay)
        if reply.drop:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        data = reply.payload()
        handler.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        try:
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test): nobody is left to answer


@dataclass(frozen=True)
class PlaceInfo:
    name: str
    lat: float
    lon: float
    tz: str


PLACES = {
    "94103,US": PlaceInfo("San Francisco", 37.7725, -122.4147, "America/Los_Angeles"),
    "02135,US": PlaceInfo("Brighton", 42.3478, -71.1566, "America/New_York"),
    "90210,US": PlaceInfo("Beverly Hills", 34.0901, -118.4065, "America/Los_Angeles"),
    "96815,US": PlaceInfo("Honolulu", 21.2811, -157.8135, "Pacific/Honolulu"),
    "E14,GB": PlaceInfo("London", 51.5073, -0.0177, "Europe/London"),
}


def kelvin_to(units: str | None, kelvin: float) -> float:
    if units == "metric":
        return round(kelvin - 273.15, 2)
    if units == "imperial":
        return round((kelvin - 273.15) * 9 / 5 + 32, 2)
    return kelvin


class OpenWeather(StandIn):
    """Geocoding by zip, current weather and the 5 day / 3 hour forecast, by lat/lon."""

    name = "OpenWeather"

    def __init__(
        self,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        places: dict[str, PlaceInfo] | None = None,
    ) -> None:
        super().__init__(latency)
        self.clock = clock
        self.places = dict(PLACES if places is None else places)
        self.bodies: dict[str, Any] = {}  # path -> a body to serve as is, instead of re-timing

    def _place_at(self, lat: float, lon: float) -> PlaceInfo:
        return min(self.places.values(), key=lambda p: abs(p.lat - lat) + abs(p.lon - lon))

    def answer(self, seen: Seen) -> Reply:
        if seen.query.get("appid") != API_KEY:
            return Reply(401, fixture("openweather/error_401.json"))
        if seen.path in self.bodies:
            return Reply(200, self.bodies[seen.path])
        if seen.path == "/geo/1.0/zip":
            zip_key = seen.query.get("zip", "")
            place = self.places.get(zip_key)
            if place is None:
                return Reply(404, fixture("openweather/error_404_geo.json"))
            body = fixture("openweather/geo_zip.json")
            body.update(
                zip=zip_key.split(",")[0],
                name=place.name,
                lat=place.lat,
                lon=place.lon,
                country=zip_key.split(",")[1],
            )
            return Reply(200, body)
        if seen.path in ("/data/2.5/weather", "/data/2.5/forecast"):
            if "zip" in seen.query:  # the deprecated built-in geocoding: country defaults to US
                zip_key = (
                    seen.query["zip"] if "," in seen.query["zip"] else seen.query["zip"] + ",US"
                )
                if zip_key not in self.places:
                    return Reply(404, fixture("openweather/error_404.json"))
                place = self.places[zip_key]
            else:
                try:
                    lat, lon = float(seen.query["lat"]), float(seen.query["lon"])
                except (KeyError, ValueError):
                    return Reply(400, fixture("openweather/error_400_wrong_latitude.json"))
                place = self._place_at(lat, lon)
            now = int(self.clock())
            local = datetime.fromtimestamp(now, ZoneInfo(place.tz))
            offset = int((local.utcoffset() or timedelta(0)).total_seconds())
            units = seen.query.get("units")
            if seen.path == "/data/2.5/weather":
                return Reply(200, self._current(place, now, offset, units))
            return Reply(
                200, self._forecast(place, now, offset, units, int(seen.query.get("cnt", 40)))
            )
        return Reply(404, {"cod": "404", "message": "Internal error"})

    @staticmethod
    def _convert(main: dict[str, Any], units: str | None) -> None:
        for key in ("temp", "feels_like", "temp_min", "temp_max"):
            if key in main:
                main[key] = kelvin_to(units, main[key])

    def _current(self, place: PlaceInfo, now: int, offset: int, units: str | None) -> Any:
        body = fixture("openweather/current_weather.json")
        body.update(
            dt=now,
            timezone=offset,
            name=place.name,
            id=0,
            coord={"lon": place.lon, "lat": place.lat},
        )
        self._convert(body["main"], units)
        return body

    def _forecast(
        self, place: PlaceInfo, now: int, offset: int, units: str | None, cnt: int
    ) -> Any:
        body = fixture("openweather/forecast.json")
        recorded = body["list"]
        first = now - now % 10800 + 10800  # steps fall on 3-hour UTC marks, the next one first
        steps = []
        for index, entry in zip(range(min(cnt, 40)), itertools.cycle(recorded)):
            step = copy.deepcopy(entry)
            step["dt"] = first + index * 10800
            step["dt_txt"] = datetime.fromtimestamp(step["dt"], timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S"
            )
            self._convert(step["main"], units)
            steps.append(step)
        body.update(cnt=len(steps), list=steps)
        body["city"].update(
            name=place.name, timezone=offset, coord={"lat": place.lat, "lon": place.lon}
        )
        return body


def gsm_segments(body: str) -> int:
    """Twilio's segment count, roughly: enough for a stand-in's answer."""
    if body.isascii():
        return 1 if len(body) <= 160 else -(-len(body) // 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


class Twilio(StandIn):
    """The Messages resource: checks the credentials and the numbers, answers 201 or an error."""

    name = "Twilio"

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(latency)
        self.unverified: set[str] = set()  # numbers a trial account may not text (21608)
        self.stopped: set[str] = set()  # numbers that replied STOP (21610)
        self._sids = itertools.count(1)
        self.messages: list[dict[str, str]] = []  # the forms of the POSTs answered 201
        self._to_faults: dict[str, deque[Reply]] = {}

    def fail_to(self, number: str, *replies: Reply) -> None:
        """Answer the next POSTs to `number` with `replies`, in order."""
        with self._lock:
            self._to_faults.setdefault(number, deque()).extend(replies)

    def posts(self, to: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if r.method == "POST" and (to is None or r.form.get("To") == to)
        )

    def answer(self, seen: Seen) -> Reply:
        path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if seen.headers.get("Authorization") != expected:
            return Reply(401, fixture("twilio/error-401-20003-captured.json"))
        if seen.method != "POST" or seen.path != path:
            return Reply(
                404,
                {
                    "code": 20404,
                    "message": f"The requested resource {seen.path} was not found",
                    "more_info": "https://www.twilio.com/docs/errors/20404",
                    "status": 404,
                },
            )
        to = seen.form.get("To", "")
        with self._lock:
            scripted = self._to_faults.get(to)
            if scripted:
                return scripted.popleft()
        if not (to.startswith("+") and to[1:].isdigit() and 2 < len(to) <= 16):
            body = fixture("twilio/error-400-21211-docs.json")
            body["message"] = f"The 'To' number {to} is not a valid phone number."
            return Reply(400, body)
        if to in self.unverified:
            return Reply(400, fixture("twilio/error-400-21608-captured.json"))
        if to in self.stopped:
            return Reply(
                400,
                {
                    "code": 21610,
                    "message": "Attempt to send to unsubscribed recipient",
                    "more_info": "https://www.twilio.com/docs/errors/21610",
                    "status": 400,
                },
            )
        body = fixture("twilio/message-201-docs-requests-to-twilio.json")
        sid = f"SM{next(self._sids):032x}"
        text = seen.form.get("Body", "")
        body.update(
            account_sid=ACCOUNT_SID,
            sid=sid,
            to=to,
            body=text,
            num_segments=str(gsm_segments(text)),
            messaging_service_sid=None,
            uri=f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
            **{"from": seen.form.get("From")},
        )
        with self._lock:
            self.messages.append(seen.form)
        return Reply(201, body)


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def program_env(openweather: StandIn, twilio: StandIn, state_dir: Path) -> dict[str, str]:
    """The settings that point weather_text.py at the stand-ins, with stand-in credentials."""
    return {
        "OPENWEATHER_API_KEY": API_KEY,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_SENDER_NUMBER": SENDER,
        "TWILIO_RECEIVER_NUMBER": RECEIVER,
        "OPENWEATHER_BASE_URL": openweather.url,
        "TWILIO_BASE_URL": twilio.url,
        "WEATHER_TEXT_STATE_DIR": str(state_dir),
        # Anything that tried a real host would go to this dead proxy and fail at once.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


@dataclass
class StandIns:
    openweather: OpenWeather
    twilio: Twilio


def started(latency: float = 0.0) -> Iterator[StandIns]:
    """Both stand-ins, running; stopped when the generator closes."""
    openweather, twilio = OpenWeather(latency), Twilio(latency)
    openweather.start()
    twilio.start()
    try:
        yield StandIns(openweather, twilio)
    finally:
        openweather.stop()
        twilio.stop()


def demo(zip_code: str) -> int:
    """Run the whole program once against the stand-ins and show the text that went out."""
    for pair in started():
        with tempfile.TemporaryDirectory() as state:
            env = {**os.environ, **program_env(pair.openweather, pair.twilio, Path(state))}
            for name in ("TWILIO_REGION", "TWILIO_EDGE"):
                env.pop(name, None)
            command = [sys.executable, str(ROOT / "weather_text.py"), zip_code]
            print("$ " + " ".join(["python", "weather_text.py", zip_code]), flush=True)
            code = subprocess.run(command, env=env).returncode
            print(f"(exit status {code})", flush=True)
            for form in pair.twilio.messages:
                print(
                    f"\nThe Twilio stand-in got this text for {form['To']}:\n\n    {form['Body']}\n"
                )
            if not pair.twilio.messages:
                print("\nNo text reached the Twilio stand-in.")
                return 1
            return code
    return 1


def serve() -> int:
    for pair in started():
        env = program_env(pair.openweather, pair.twilio, Path(tempfile.mkdtemp()))
        print("Stand-ins running. In another shell:\n")
        for key, value in env.items():
            if "PROXY" not in key:
                print(f"export {key}={value}")
        print("\nthen: python weather_text.py 94103   (Ctrl-C here stops them)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if command == "demo":
        raise SystemExit(demo(sys.argv[2] if len(sys.argv) > 2 else "94103"))
    if command == "serve":
        raise SystemExit(serve())
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
