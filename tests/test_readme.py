"""The README's promises: its two quick-start commands, and that CI runs the second one."""

from __future__ import annotations

import os
import re
import subprocess

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    return str(block).strip().splitlines()


def test_the_quick_start_is_two_commands() -> None:
    assert quick_start_commands() == ["make demo", "make test"]


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert quick_start_commands()[1] in ci.splitlines()


def test_make_demo_sends_a_text_through_the_stand_ins() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "OPENWEATHER_"))}
    done = subprocess.run(
        quick_start_commands()[0].split(),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(exit status 0)" in done.stdout
    [text] = re.findall(
        r"The Twilio stand-in got this text for \+15558675310:\n\n    (.+)\n", done.stdout
    )
    assert text.startswith("San Francisco: ") and len(text) <= 160
    assert re.search(r"weather_text: sent SM\w{32} to \+1\*{6}5310 \(1 segment\)", done.stderr)


def test_files_the_readme_names_exist() -> None:
    for name in re.findall(r"`((?:[\w.-]+/)*[\w-]+\.(?:py|txt|example|sh\.example))`", README):
        if name not in ("secrets.sh",):
            assert (ROOT / name).exists(), name
