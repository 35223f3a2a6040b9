"""pi2pi: the runtime deployed to both Pis (camera, viewer, talk, listen)."""

__version__ = "0.1.0"
