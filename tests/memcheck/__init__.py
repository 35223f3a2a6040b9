"""valgrind memcheck of what pi2pi loads natively (libturbojpeg, libopus, libasound).

`python -m tests.memcheck` (`make memcheck`) runs camera -> viewer and talk ->
listen, both ends under valgrind at once, and a planted leak as the positive
control; tests/memcheck/run.py says what is checked.
"""
