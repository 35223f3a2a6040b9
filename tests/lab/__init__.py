"""The namespaced lab: see lab.py."""
