# pi2pi: every entry point a person or CI uses. `make help` lists them.
# Run as root on Debian 12: set-up installs Debian packages and builds .venv.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LAB   := $(PY) -m tests.lab

.PHONY: help setup test test-host test-hw demo lab-up lab-down lab-shell bench-video bench-audio lock

help:
	@echo "make setup        Debian packages + .venv (every other target runs it)"
	@echo "make test         all tests: unit, lint, media, lab, hardware lab (CI runs this)"
	@echo "make demo         the lab end to end: provision, call, hang up, stats"
	@echo "make lab-up       start the namespaced lab; make lab-shell HOST=natpi; make lab-down"
	@echo "make bench-video  video benchmark;  make bench-audio  audio benchmark"

setup:
	@scripts/setup.sh apt-packages-hw.txt

# The README's test command. Host tests (unit, lint, media, lab) then the VM.
test: test-host test-hw

test-host: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-hw: setup
	tests/hw/run

demo: setup
	$(PY) -m tests.demo

lab-up: setup
	$(LAB) up

lab-down: setup
	$(LAB) down

lab-shell: setup
	$(LAB) shell $(or $(HOST),natpi)

bench-video: setup
	$(PY) -m tests.bench.video

bench-audio: setup
	$(PY) -m tests.bench.audio

lock:
	$(VENV)/bin/pip freeze --local --exclude-editable | sed '1i # Full pin set of the controller venv (pip freeze --local); regenerate with `make lock`.' > constraints.txt
