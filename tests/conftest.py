"""Shared pytest set-up: the namespaced lab's fixtures (tests/lab/fixtures.py)."""

pytest_plugins = ["tests.lab.fixtures"]
