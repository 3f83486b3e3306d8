# The two commands of the README's quick start, and what they need.
#   make demo   run weather_text.py once against local stand-ins of OpenWeather and Twilio
#   make test   lint, type-check and run every test (what CI runs)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

demo: $(VENV)/.installed
	$(BIN)/python tests/standins.py demo 94103

test: $(VENV)/.installed
	scripts/install-test-services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/run.py

$(VENV)/.installed: requirements.txt requirements-schedulers.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
