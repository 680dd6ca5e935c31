"""State hooks: run a user's program (e.g. an LED driver) on every conversation state change.

Owns `StateHook`. The program is `argv + [state]`, started directly (never through a shell,
so no string from anywhere is interpreted), with a minimal environment (`hook_environment`:
TALKBOX_STATE=state, PATH, HOME and the locale, never a secret), stdin from /dev/null and
its output captured for the debug log. A hook never blocks or breaks the daemon: `notify()`
returns at once, one hook process runs at a time, states that arrive while it runs are
coalesced to the latest, a run past `timeout` seconds is killed with its whole process
group, and failures are logged (one warning per state change), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence

from talkbox.safe_text import safe_line, shown_value

# Named as before the shell became a package: owners' log filters match these names.
_log = logging.getLogger("talkbox.hooks")

DEFAULT_OUTPUT_LIMIT = 2048
# After the hook exits, output still in flight is read for this long at most: a background
# child that inherited the pipe (an LED blinker left running on purpose) must not stall us.
_OUTPUT_GRACE_SECONDS = 0.5
# A hook gets only these of the daemon's variables (and TALKBOX_STATE): never the API key,
# the credentials directory, or systemd's notify/watchdog/socket variables, with which a
# hook could speak for the daemon. The daemon's environment is not the hook's business.
_PASSED_VARIABLES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ"})
_PASSED_PREFIXES = ("LC_",)
# Where the daemon has no PATH (an empty environment), the hook still finds the basics.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def hook_environment(base: Mapping[str, str], state: str) -> dict[str, str]:
    """The whole environment of a hook run: PATH, HOME, LANG, LANGUAGE, LC_*, TZ from
    `base` (the daemon's), and TALKBOX_STATE=state. Nothing else, whatever `base` holds."""
    environment = {
        name: value
        for name, value in base.items()
        if name in _PASSED_VARIABLES or name.startswith(_PASSED_PREFIXES)
    }
    environment.setdefault("PATH", DEFAULT_PATH)
    environment["TALKBOX_STATE"] = state
    return environment


def hook_program_warning(argv: Sequence[str]) -> str:
    """What is wrong with the hook program on this machine now ("" if nothing or no hook).

    Only a warning: the config may be checked before the program is installed, or on
    another machine, and a hook that cannot start never harms the daemon.
    """
    if not argv:
        return ""
    program = argv[0]
    looks_like_a_command_line = " " in program.strip()
    hint = (
        "; it looks like a command line: give the program and each argument as separate "
        'strings, like ["/path/to/program", "arg"]'
        if looks_like_a_command_line
        else ""
    )
    shown = shown_value(program)
    if not os.path.exists(program):
        return f"hooks.on_state: {shown} does not exist (yet){hint}"
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        return f"hooks.on_state: {shown} is not an executable file (chmod +x it){hint}"
    return ""


def _shorten(output: bytes, limit: int) -> str:
    # The hook's output is not ours: one safe line, like everything else from outside.
    return safe_line(output.decode("utf-8", errors="replace"), limit)


class StateHook:
    """Runs `argv + [state]` for each state change, in order, coalescing what piles up.

    An empty `argv` means no hook: `notify` then does nothing.
    """

    def __init__(
        self,
        argv: Sequence[str],
        timeout: float,
        *,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("hook timeout must be positive")
        self.argv = list(argv)
        self.timeout = timeout
        self._output_limit = output_limit
        self._environ = environ
        self._pending: str | None = None
        self._last_requested: str | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def notify(self, state: str) -> None:
        """Ask for the hook to run with `state`; returns at once.

        A state equal to the last one asked for is not a change and runs nothing. If a hook
        is still running, `state` replaces any state already waiting behind it.
        """
        if not self.argv or self._closed or state == self._last_requested:
            return
        self._last_requested = state
        self._pending = state
        if self._worker is None:
            self._worker = asyncio.create_task(self._deliver_pending(), name="state-hook")

    async def aclose(self) -> None:
        """Deliver what is waiting (each run still bounded by the timeout), then stop.

        If this wait is cancelled, the running hook's process group is killed.
        """
        self._closed = True
        if self._worker is not None:
            await self._worker

    async def _deliver_pending(self) -> None:
        try:
            while self._pending is not None:
                state, self._pending = self._pending, None
                try:
                    await self._run(state)
                except Exception:
                    # A bug here must not end hook delivery for the rest of the daemon's life.
                    _log.exception("state hook for state %s failed", state)
        finally:
            self._worker = None

    async def _run(self, state: str) -> None:
        argv = [*self.argv, state]
        environment = hook_environment(
            os.environ if self._environ is None else self._environ, state
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environment,
                # Its own process group, so a timeout kills whatever the hook started too.
                start_new_session=True,
            )
        except (OSError, ValueError) as error:
            # ValueError: a NUL byte in an argument.
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            _log.warning(
                "state hook %s could not be started for state %s: %s",
                self.argv[0],
                state,
                reason,
                extra={"TALKBOX_STATE": state},
            )
            return

        assert process.stdout is not None
        output_reader = asyncio.create_task(self._read_output(process.stdout))
        output = b""
        timed_out = False
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await process.wait()
            except TimeoutError:
                timed_out = True
                _kill_group(process.pid)
                await process.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output_reader), _OUTPUT_GRACE_SECONDS)
        except asyncio.CancelledError:
            _kill_group(process.pid)
            raise
        finally:
            output_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                output = await output_reader

        shown = _shorten(output, self._output_limit)
        if shown:
            _log.debug("state hook output for %s: %s", state, shown, extra={"TALKBOX_STATE": state})
        if timed_out:
            _log.warning(
                "state hook %s ran longer than %g s for state %s and was killed",
                self.argv[0],
                self.timeout,
                state,
                extra={"TALKBOX_STATE": state},
            )
        elif process.returncode != 0:
            returncode = process.returncode if process.returncode is not None else -1
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            _log.warning(
                "state hook %s %s for state %s%s",
                self.argv[0],
                how,
                state,
                f": {shown}" if shown else "",
                extra={"TALKBOX_STATE": state},
            )

    async def _read_output(self, stream: asyncio.StreamReader) -> bytes:
        # Keep the first `limit` bytes and keep draining the rest, so a chatty hook never
        # blocks on a full pipe.
        kept = bytearray()
        try:
            while chunk := await stream.read(65536):
                room = self._output_limit + 1 - len(kept)
                if room > 0:
                    kept += chunk[:room]
        except asyncio.CancelledError:
            # Cancelled by _run itself when the grace period is over: what was read so far
            # is the result.
            pass
        return bytes(kept)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
