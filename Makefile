# pi2pi: every entry point a person or CI uses. `make help` lists them.
# Run as root on Debian 12: set-up installs Debian packages and builds .venv.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LAB   := $(PY) -m tests.lab
SOAK_MINUTES ?= 30
FUZZ_RUNS ?= 100000

.PHONY: help setup setup-test test test-host test-hw test-arm test-arm-setup demo lab-up lab-down lab-shell bench-video bench-adapt bench-audio bench-panel bench-hw bench-transport fuzz memcheck soak lock

help:
	@echo "make setup        the controller's Debian packages + .venv: Ansible, fab (what natpi needs)"
	@echo "make setup-test   and the test bench's: lab, VMs, linters, pytest (the other targets run it)"
	@echo "make test         all tests: unit, lint, media, lab, hardware lab, emulated ARM Pis (CI runs this)"
	@echo "make test-arm     the runtime on emulated Pis (bookworm armhf/arm64, bullseye armhf)"
	@echo "make test-arm-setup  make setup inside an emulated armhf Pi: the controller's set-up alone"
	@echo "make demo         the lab end to end: provision, call, hang up, stats"
	@echo "make lab-up       start the namespaced lab; make lab-shell HOST=natpi; make lab-down"
	@echo "make bench-video  video benchmark;  make bench-audio  audio benchmark;  make bench-panel  the panel's picture cost"
	@echo "make bench-hw     Pi-class video figures: camera and viewer next to GStreamer in the hardware lab VM"
	@echo "make bench-adapt  the camera's adaptive quality on a link limited to a third of the stream, then freed"
	@echo "make bench-transport  media direct vs inside the ssh tunnel (two ciphers) in the lab: CPU per MB, latency, loss"
	@echo "make fuzz         fuzz each parser long (FUZZ_RUNS=$(FUZZ_RUNS) inputs each; make test runs a short one)"
	@echo "make soak         a $(SOAK_MINUTES)-minute call in the lab: memory, fds, threads flat (SOAK_MINUTES=; make test runs 2)"
	@echo "make memcheck     valgrind memcheck of camera->viewer and talk->listen: no leaks in the native libraries"

# The controller's set-up (natpi): Ansible, fab, what the playbooks call.
setup:
	@scripts/setup.sh

# The test bench's, beside the controller's: every target below runs it.
setup-test:
	@scripts/setup.sh test

# The README's test command. Host tests (unit, lint, media, lab), the VM, an emulated
# 32-bit Pi (bookworm armhf: Pi 2 and 3, the seed's; each root costs 3-5 min to build
# on a bare machine, so arm64 and bullseye are make test-arm's). That root is built
# beside the host tests, which leave most of the CPU idle, at the lowest priority; its
# lock makes test-arm wait for it (and build it again if that build failed).
test: setup-test
	@mkdir -p out; nice -n 19 tests/arm/root.sh bookworm armhf >out/arm-root.log 2>&1 & root=$$!; \
	$(MAKE) test-host test-hw && $(MAKE) test-arm PI2PI_ARM_ROOTS=bookworm:armhf; status=$$?; \
	wait $$root || echo "make test: building the armhf root beside the tests failed: out/arm-root.log" >&2; \
	exit $$status

# The lab's tests and the others, as two pytest runs at once (scripts/test-host says why).
test-host: setup-test
	scripts/test-host $(PYTEST_ARGS)

test-hw: setup-test
	tests/hw/run

# Roots cached in /var/cache/pi2pi-arm (PI2PI_ARM_CACHE); PI2PI_ARM_ROOTS="bookworm:armhf" narrows them.
test-arm: setup-test
	PI2PI_ARM=1 PI2PI_ARM_ROOTS="$(PI2PI_ARM_ROOTS)" $(VENV)/bin/pytest tests/arm/test_runtime.py $(PYTEST_ARGS)

# Slow (the controller's packages installed under emulation), so not in make test.
test-arm-setup: setup-test
	PI2PI_ARM=1 $(VENV)/bin/pytest tests/arm/test_controller_setup.py $(PYTEST_ARGS)

demo: setup-test
	$(PY) -m tests.demo

lab-up: setup-test
	$(LAB) up

lab-down: setup-test
	$(LAB) down

lab-shell: setup-test
	$(LAB) shell $(or $(HOST),natpi)

bench-video: setup-test
	$(PY) -m tests.bench.video

bench-adapt: setup-test
	$(PY) -m tests.bench.adapt

bench-audio: setup-test
	$(PY) -m tests.bench.audio

bench-panel: setup-test
	$(PY) -m tests.bench.panel

# Pi-class figures: camera and viewer next to GStreamer in the hardware lab VM (~10 min).
bench-hw: setup-test
	PI2PI_HW_TIMEOUT=1200 PI2PI_HW_OUT=$(CURDIR)/out/hw-bench tests/hw/run -o python_files=bench_pi_class.py -k pi_class -s

bench-transport: setup-test
	$(PY) -m tests.bench.transport

# Every target, even after one found something; fails if any did.
fuzz: setup-test
	@status=0; for target in video audio handshake; do \
		$(PY) -m tests.fuzz $$target --runs $(FUZZ_RUNS) || status=1; \
	done; exit $$status

soak: setup-test
	$(PY) -m tests.soak --minutes $(SOAK_MINUTES)

memcheck: setup-test
	$(PY) -m tests.memcheck

lock:
	$(VENV)/bin/pip freeze --local --exclude-editable | sed '1i # Full pin set of the controller venv (pip freeze --local); regenerate with `make lock`.' > constraints.txt
