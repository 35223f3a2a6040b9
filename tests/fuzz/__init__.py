"""Coverage-guided fuzzing (atheris/libFuzzer) of what a peer's bytes go through.

One target per parser: `video` (frames to pixels), `audio` (frames to the
speaker's PCM), `handshake` (the token handshake, both sides). Each target is a
module here that runs as libFuzzer's child (`python -m tests.fuzz.video ...`);
`python -m tests.fuzz TARGET --runs N` (tests/fuzz/__main__.py) writes its seed
corpus and the saved regressions into a temporary directory, runs it and sums
up. `make fuzz` runs every target long; tests/fuzz/test_fuzz.py runs them short.
"""
