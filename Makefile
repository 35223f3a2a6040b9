# pi2pi: every entry point a person or CI uses. `make help` lists them.
# Run as root on Debian 12: set-up installs Debian packages and builds .venv.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LAB   := $(PY) -m tests.lab
SOAK_MINUTES ?= 30
FUZZ_RUNS ?= 100000

.PHONY: help setup test test-host test-hw demo lab-up lab-down lab-shell bench-video bench-adapt bench-audio bench-panel bench-transport fuzz memcheck soak lock

help:
	@echo "make setup        Debian packages + .venv (every other target runs it)"
	@echo "make test         all tests: unit, lint, media, lab, hardware lab (CI runs this)"
	@echo "make demo         the lab end to end: provision, call, hang up, stats"
	@echo "make lab-up       start the namespaced lab; make lab-shell HOST=natpi; make lab-down"
	@echo "make bench-video  video benchmark;  make bench-audio  audio benchmark;  make bench-panel  the panel's picture cost"
	@echo "make bench-adapt  the camera's adaptive quality on a link limited to a third of the stream, then freed"
	@echo "make bench-transport  media direct vs inside the ssh tunnel (two ciphers) in the lab: CPU per MB, latency, loss"
	@echo "make fuzz         fuzz each parser long (FUZZ_RUNS=$(FUZZ_RUNS) inputs each; make test runs a short one)"
	@echo "make soak         a $(SOAK_MINUTES)-minute call in the lab: memory, fds, threads flat (SOAK_MINUTES=; make test runs 2)"
	@echo "make memcheck     valgrind memcheck of camera->viewer and talk->listen: no leaks in the native libraries"

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

bench-adapt: setup
	$(PY) -m tests.bench.adapt

bench-audio: setup
	$(PY) -m tests.bench.audio

bench-panel: setup
	$(PY) -m tests.bench.panel

bench-transport: setup
	$(PY) -m tests.bench.transport

# Every target, even after one found something; fails if any did.
fuzz: setup
	@status=0; for target in video audio handshake; do \
		$(PY) -m tests.fuzz $$target --runs $(FUZZ_RUNS) || status=1; \
	done; exit $$status

soak: setup
	$(PY) -m tests.soak --minutes $(SOAK_MINUTES)

memcheck: setup
	$(PY) -m tests.memcheck

lock:
	$(VENV)/bin/pip freeze --local --exclude-editable | sed '1i # Full pin set of the controller venv (pip freeze --local); regenerate with `make lock`.' > constraints.txt
