"""The audio wing: ALSA I/O, Opus codec, jitter buffer, talk, listen."""
