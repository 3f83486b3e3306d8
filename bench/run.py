"""Benchmark weather_text.py against the local stand-ins, with a set latency per response.

    python bench/run.py [--latency 0.05] [--runs 5]

Prints medians over repeated runs: the program beside a curl + jq one-liner, fan-out to
1, 10 and 100 receivers, sequential round trips per run, peak memory and CPU time, and
whether --dry-run imports twilio. Figures, not pass/fail: the tests check behaviour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import standins  # noqa: E402

CURL_ONE_LINER = r"""
curl -sf "$OPENWEATHER_BASE_URL/data/2.5/weather" -G -d zip=94103,US -d units=imperial \
    -d "appid=$OPENWEATHER_API_KEY" \
| jq -r '"\(.name): \(.main.temp|round)F, \(.weather[0].description)"' \
| { read -r body && curl -sf -u "$TWILIO_ACCOUNT_SID:$TWILIO_AUTH_TOKEN" \
    --data-urlencode "To=$TWILIO_RECEIVER_NUMBER" --data-urlencode "From=$TWILIO_SENDER_NUMBER" \
    --data-urlencode "Body=$body" \
    "$TWILIO_BASE_URL/2010-04-01/Accounts/$TWILIO_ACCOUNT_SID/Messages.json" >/dev/null; }
"""


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process itself
    rss_mib: float  # peak resident memory
    round_trips: int
    code: int


def round_trips(arrivals: Sequence[float], latency: float) -> int:
    """Requests that arrive while an earlier one is still waiting share its round trip."""
    trips, open_until = 0, float("-inf")
    for at in sorted(arrivals):
        if at >= open_until:
            trips += 1
            open_until = at + latency
    return trips


def measure(command: Sequence[str], env: dict[str, str], pair: standins.StandIns) -> Run:
    before = len(pair.openweather.requests) + len(pair.twilio.requests)
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"benchmark run failed ({process.returncode}): {process.stderr.read().decode()}")  # type: ignore[union-attr]
    arrivals = [r.at for r in pair.openweather.requests + pair.twilio.requests]
    arrivals = sorted(arrivals)[before:]
    return Run(
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        round_trips(arrivals, pair.openweather.latency),
        process.returncode,
    )


def median(runs: Sequence[Run], field: str) -> float:
    return float(statistics.median(getattr(run, field) for run in runs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per response")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median)")
    args = parser.parse_args(argv)
    for tool in ("curl", "jq"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (apt-get install {tool})")

    python = sys.executable
    program = [python, str(ROOT / "weather_text.py"), "94103", "--quiet"]
    rows: list[tuple[str, str]] = []
    for pair in standins.started(latency=args.latency):
        with tempfile.TemporaryDirectory() as scratch:
            base = {"PATH": os.environ["PATH"], "HOME": scratch}
            base.update(standins.program_env(pair.openweather, pair.twilio, Path(scratch)))

            def fresh_state(name: str, env: dict[str, str] = base) -> dict[str, str]:
                return {**env, "WEATHER_TEXT_STATE_DIR": str(Path(scratch) / name)}

            first = [measure(program, fresh_state(f"first{i}"), pair) for i in range(args.runs)]
            steady_env = fresh_state("steady")
            measure(program, steady_env, pair)  # caches the zip's coordinates
            steady = [measure([*program, "--force"], steady_env, pair) for _ in range(args.runs)]
            curl = [
                measure(["/bin/sh", "-c", CURL_ONE_LINER], base, pair) for _ in range(args.runs)
            ]
            fan_out = {}
            for count in (1, 10, 100):
                receivers = ",".join(f"+1555{n:07d}" for n in range(count))
                env = {**steady_env, "TWILIO_RECEIVER_NUMBER": receivers}
                fan_out[count] = [
                    measure([*program, "--force"], env, pair) for _ in range(args.runs)
                ]
            probe = (
                "import sys, weather_text\n"
                "weather_text.main(['94103', '--dry-run', '-q'])\n"
                "print('twilio' in sys.modules)\n"
            )
            imported = subprocess.run(
                [python, "-c", probe], env=steady_env, cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()

    ms = 1000
    program_wall, curl_wall = median(steady, "wall"), median(curl, "wall")
    rows += [
        ("response latency of each stand-in", f"{args.latency * ms:.0f} ms"),
        ("weather_text.py, steady state (wall)", f"{program_wall * ms:.0f} ms"),
        ("curl + jq one-liner (wall)", f"{curl_wall * ms:.0f} ms"),
        ("ratio program / one-liner", f"{program_wall / curl_wall:.2f}"),
        ("weather_text.py, first run (wall)", f"{median(first, 'wall') * ms:.0f} ms"),
    ]
    for count, runs in fan_out.items():
        rows.append(
            (
                f"{count} receiver{'s' if count > 1 else ''} (wall; round trips)",
                f"{median(runs, 'wall') * ms:.0f} ms; {median(runs, 'round_trips'):.0f}",
            )
        )
    rows += [
        ("sequential round trips, first run", f"{median(first, 'round_trips'):.0f}"),
        ("sequential round trips, steady state", f"{median(steady, 'round_trips'):.0f}"),
        ("sequential round trips, curl + jq", f"{median(curl, 'round_trips'):.0f}"),
        ("peak memory (RSS), steady state", f"{median(steady, 'rss_mib'):.1f} MiB"),
        ("CPU time of the program (outside the network)", f"{median(steady, 'cpu') * ms:.0f} ms"),
        ("CPU time of the one-liner (curl, jq, sh)", f"{median(curl, 'cpu') * ms:.0f} ms"),
        ("--dry-run imports twilio", "yes" if imported == "True" else "no"),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"weather_text benchmark: median of {args.runs} runs, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores\n"
    )
    print(f"| {'what'.ljust(width)} | figure |\n|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
