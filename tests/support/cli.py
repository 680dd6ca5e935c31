"""Run the `talkbox` command line as a real process, the way a user would, for CLI tests.

Owns the process side of those tests: the environment it gets (`environment`), starting it
and collecting what it printed (`RunningTalkbox`, `run_talkbox`) and the checks every run
must pass whatever it was asked: no traceback, and none of the test's secrets in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

# Long enough for any run on a loaded 2-core machine; it only turns a hang into a failure.
DEFAULT_TIMEOUT_S = 60.0
# Root reads any file whatever its mode: as root, a test that wants file permissions to count
# runs talkbox as root without capabilities (a user's view of files that are not theirs).
WITHOUT_ROOT_PRIVILEGES = ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--")


@dataclass(frozen=True)
class CliRun:
    """What one finished run of `talkbox` did."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float  # wall clock from start to exit


def environment(
    without: Iterable[str],
    overlay: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (this process's environment by default) less the variables named in `without`,
    then `overlay` on top: a test's own settings must not decide where the key comes from."""
    dropped = set(without)
    source = os.environ if base is None else base
    return {**{k: v for k, v in source.items() if k not in dropped}, **(overlay or {})}


class RunningTalkbox:
    """`talkbox ARGS...` started as a process with exactly `env`; `finish()` waits for it and
    checks its output, where none of `secrets` may appear. `unprivileged`: file permissions
    hold for it, as for an ordinary user, even where the tests run as root."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str],
        secrets: Collection[str] = (),
        unprivileged: bool = False,
    ) -> None:
        self.secrets = tuple(secrets)
        self.started = time.monotonic()
        prefix = WITHOUT_ROOT_PRIVILEGES if unprivileged and os.geteuid() == 0 else ()
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "talkbox.cli", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
        )

    def finish(self, timeout: float = DEFAULT_TIMEOUT_S) -> CliRun:
        """Wait for the exit; the run is a failure if it crashed or showed a secret."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"talkbox did not end within {timeout:g} s") from None
        run = CliRun(self.process.returncode, stdout, stderr, time.monotonic() - self.started)
        for index, secret in enumerate(self.secrets):
            # The message names the secret by position: repeating it would leak it further.
            assert secret not in run.stdout + run.stderr, f"secret #{index} appeared in the output"
        assert "Traceback" not in run.stderr, run.stderr
        return run

    def kill(self) -> None:
        """End the process at once (when the test fails before it would end by itself)."""
        self.process.kill()
        self.process.communicate()


def run_talkbox(
    *args: str,
    env: Mapping[str, str],
    secrets: Collection[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    unprivileged: bool = False,
) -> CliRun:
    """Run `talkbox ARGS...` with exactly `env` to its end, failing after `timeout` s."""
    return RunningTalkbox(*args, env=env, secrets=secrets, unprivileged=unprivileged).finish(
        timeout
    )
