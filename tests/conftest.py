"""Shared fixtures: the API stand-ins, the program's settings, and a guard against the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import weather_text
from tests import standins

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (standins.API_KEY, standins.AUTH_TOKEN)
OWN_VARIABLES = (
    "OPENWEATHER_",
    "TWILIO_",
    "WEATHER_TEXT_",
    "CELERY_",
    "XDG_STATE_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real secrets, no secrets.sh of the checkout, and no connection off this machine."""
    for name in list(os.environ):
        if name.upper().startswith(OWN_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setattr(weather_text, "SECRETS_FILE", tmp_path / "no-secrets.sh")
    real_connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise AssertionError(f"a test tried to reach {address!r}: only loopback is allowed")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def openweather() -> Iterator[standins.OpenWeather]:
    with standins.OpenWeather() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def twilio() -> Iterator[standins.Twilio]:
    with standins.Twilio() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def settings(
    openweather: standins.OpenWeather, twilio: standins.Twilio, state_dir: Path
) -> dict[str, str]:
    """The program's settings, pointing at the stand-ins, with a short timeout."""
    return {
        **standins.program_env(openweather, twilio, state_dir),
        "WEATHER_TEXT_TIMEOUT": "1",
    }


@pytest.fixture
def env(settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The settings, put in the environment of this process for `main()`."""
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return settings


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def all(self) -> str:
        return self.out + self.err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """Call weather_text.main(args) and capture what it printed."""

    def call(*args: str) -> Result:
        code = weather_text.main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def run_script(
    args: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 60
) -> Result:
    """Run weather_text.py as a separate process, the way cron does."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "weather_text.py"), *args],
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
