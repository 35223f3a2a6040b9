"""A failed test must not leave a program behind (the video tests' own fixture)."""
from tests.video.conftest import no_leftover_programs  # noqa: F401  (autouse)
