"""A `talkbox run` under test whose speaker stands by sooner than the shipped 30 s.

Python imports `sitecustomize` at start-up from its path: with this directory on PYTHONPATH
and TALKBOX_TEST_SPEAKER_STANDBY_SECONDS set (support.daemon.short_speaker_standby() makes
both), the daemon's linger constant is set to that before the daemon runs, so a test need not
wait 30 s to see the speaker stand by. Nothing else of the daemon changes, and owners have no
key for it.
"""

import os

_seconds = os.environ.get("TALKBOX_TEST_SPEAKER_STANDBY_SECONDS")
if _seconds:
    import talkbox.shell.service

    talkbox.shell.service.SPEAKER_STANDBY_SECONDS = float(_seconds)
