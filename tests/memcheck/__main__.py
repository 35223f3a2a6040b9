"""python -m tests.memcheck [--frames N] [--seconds S] [--keep DIR]: see tests/memcheck/run.py."""
import sys

from tests.memcheck.run import main

sys.exit(main())
