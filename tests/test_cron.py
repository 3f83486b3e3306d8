"""crontab.example as written: in cron's bare environment, and under a real cron daemon."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import standins
from tests.conftest import ROOT

PLACEHOLDER = "/home/you/weather-text"
CRONTAB = (ROOT / "crontab.example").read_text()


def job_line(text: str = CRONTAB) -> str:
    """The one schedule line of crontab.example."""
    [line] = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return line


def cron_command(line: str) -> str:
    """What cron hands to /bin/sh: the line less its schedule, `\\%` made `%`, `%` a newline."""
    command = line.split(None, 5)[5]
    command = re.sub(r"(?<!\\)%", "\n", command)
    return command.replace("\\%", "%")


def make_checkout(root: Path, settings: dict[str, str]) -> Path:
    """A checkout as the README sets one up: the script, secrets.sh (600), and .venv."""
    checkout = root / "weather-text"
    checkout.mkdir()
    shutil.copy(ROOT / "weather_text.py", checkout)
    secrets = checkout / "secrets.sh"
    secrets.write_text("".join(f"export {k}={v}\n" for k, v in settings.items()))
    secrets.chmod(0o600)
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    return checkout


def test_crontab_example_is_well_formed() -> None:
    assert CRONTAB.endswith("\n")
    line = job_line()
    assert line.split()[:5] == ["0", "7", "*", "*", "*"]
    assert re.search(r"(?<!\\)%", line) is None  # every % escaped
    assert "source " not in line and ". ./secrets.sh" in line
    assert "flock -n" in line and ".venv/bin/python weather_text.py" in line
    assert line.endswith(">> weather_text.log 2>&1")


def test_the_crontab_line_works_in_crons_environment(settings, twilio, tmp_path) -> None:
    checkout = make_checkout(tmp_path, settings)
    command = cron_command(job_line().replace(PLACEHOLDER, str(checkout)))
    done = subprocess.run(
        ["env", "-i", f"HOME={tmp_path}", "PATH=/usr/bin:/bin", "/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    log = (checkout / "weather_text.log").read_text()
    assert re.search(r"weather_text: sent SM\w{32} to \+1\*{6}5310 \(1 segment\)\n$", log)
    assert twilio.posts() == 1


# --- under the real cron daemon (Debian's cron) --------------------------------------------------


def cron_pids() -> list[int]:
    """Running cron daemons, read from /proc (pgrep is not on every machine)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "cron":
                pids.append(int(comm.parent.name))
        except OSError:
            pass  # the process ended while we looked
    return pids


@dataclass
class Crontab:
    saved: str  # the crontab found, restored after the test

    def install(self, line: str) -> None:
        """The crontab found, plus `line`: its own entries keep running meanwhile."""
        subprocess.run(["crontab", "-"], input=self.saved + line + "\n", text=True, check=True)


@pytest.fixture
def cron_daemon() -> Iterator[Crontab]:
    """Debian's cron: the one running, or one started in the foreground for this test."""
    daemon = None
    if not cron_pids():
        cron = Path("/usr/sbin/cron")
        assert cron.exists(), "Debian's cron is not installed: run scripts/install-test-services"
        assert os.geteuid() == 0, "no cron daemon runs, and starting one needs root"
        daemon = subprocess.Popen([str(cron), "-f"], stderr=subprocess.DEVNULL)
    found = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    crontab = Crontab(found.stdout if found.returncode == 0 else "")
    try:
        yield crontab
    finally:
        if found.returncode == 0:
            subprocess.run(["crontab", "-"], input=found.stdout, text=True, check=True)
        else:
            subprocess.run(["crontab", "-r"], capture_output=True)
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)


def wait_for(predicate: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


@pytest.mark.slow
def test_under_the_real_cron_daemon_one_text_a_day(cron_daemon, settings, twilio, tmp_path):
    checkout = make_checkout(tmp_path, settings)
    line = job_line().replace(PLACEHOLDER, str(checkout))
    every_minute = "* * * * * " + line.split(None, 5)[5]
    cron_daemon.install(every_minute)
    log = checkout / "weather_text.log"

    def log_text() -> str:
        return log.read_text() if log.exists() else ""

    assert wait_for(lambda: twilio.posts() >= 1, 75), "cron did not run the line within 75 s"
    assert wait_for(lambda: " sent SM" in log_text(), 15)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d weather_text: sent SM", log_text(), re.M)
    # The next firing, the same day, finds today's record and sends nothing.
    assert wait_for(lambda: "already sent today" in log_text(), 75), log_text()
    assert twilio.posts() == 1
    assert len(twilio.messages) == 1
    assert twilio.messages[0]["To"] == standins.RECEIVER
