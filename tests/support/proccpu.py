"""CPU time and wake-ups of a live process and its threads, as the kernel reports them in /proc.

`read_process(pid)` reads the process's CPU time (all threads, ended ones included) and, for
each thread, its name (`comm`), user and system CPU time and start (`stat`) and its voluntary
and involuntary context switches (`status`). `thread_usage(before, after)` turns two readings
into what each thread used in between. `waiting_in(pid, tid)` says where a sleeping thread
waits: the kernel function (`wchan`) and, when the system call's first argument is an open
file descriptor, what that is (a FIFO, the epoll instance).

CPU times come in clock ticks (1/100 s on Linux): over 30 s a thread's figure is good to
about 0.0003 CPU-s/s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StatTimes:
    """What a /proc stat line says about CPU time, in seconds."""

    user: float
    system: float
    started: float  # after boot


def parse_stat(stat: str) -> StatTimes:
    """The times in a /proc/PID[/task/TID]/stat line. The name in parentheses may itself hold
    spaces and parentheses, so the fields are counted from the last ')'."""
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])  # 14, 15, 22
    return StatTimes(utime / CLOCK_TICKS_PER_SECOND, stime / CLOCK_TICKS_PER_SECOND,
                     starttime / CLOCK_TICKS_PER_SECOND)


def parse_switches(status: str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches from a /proc status file."""
    counts = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            counts[name] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


@dataclass(frozen=True)
class ThreadReading:
    tid: int
    name: str  # comm: threads inherit the process's unless they name themselves
    user_seconds: float
    system_seconds: float
    started_seconds: float  # after boot
    voluntary_switches: int  # the thread went to sleep: each one is a later wake-up
    involuntary_switches: int  # the scheduler took the CPU away


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    cpu_seconds: float  # user + system of the whole process, ended threads included
    started_seconds: float  # after boot
    threads: dict[int, ThreadReading]


def read_process(pid: int) -> ProcessReading:
    """One reading of a live process and its threads (a thread that ends meanwhile is left out)."""
    times = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    threads: dict[int, ThreadReading] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            thread_times = parse_stat((task / "stat").read_text())
            voluntary, involuntary = parse_switches((task / "status").read_text())
            name = (task / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        tid = int(task.name)
        threads[tid] = ThreadReading(tid, name, thread_times.user, thread_times.system,
                                     thread_times.started, voluntary, involuntary)
    return ProcessReading(pid, times.user + times.system, times.started, threads)


@dataclass(frozen=True)
class ThreadUsage:
    """What one thread did between two readings."""

    tid: int
    name: str
    started_after_process_seconds: float
    user_seconds: float
    system_seconds: float
    voluntary_switches: int
    involuntary_switches: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def thread_usage(before: ProcessReading, after: ProcessReading) -> list[ThreadUsage]:
    """Each thread alive at `after`, by thread id; one that started in between counts from
    zero. Threads that ended in between are missing here, but not from the process's total."""
    usages = []
    for tid, end in sorted(after.threads.items()):
        start = before.threads.get(tid)
        if start is None or start.started_seconds != end.started_seconds:  # new, or id reused
            start = ThreadReading(tid, end.name, 0.0, 0.0, end.started_seconds, 0, 0)
        usages.append(ThreadUsage(
            tid=tid, name=end.name,
            started_after_process_seconds=end.started_seconds - after.started_seconds,
            user_seconds=end.user_seconds - start.user_seconds,
            system_seconds=end.system_seconds - start.system_seconds,
            voluntary_switches=end.voluntary_switches - start.voluntary_switches,
            involuntary_switches=end.involuntary_switches - start.involuntary_switches))
    return usages


def waiting_in(pid: int, tid: int) -> str | None:
    """Where thread `tid` of `pid` sleeps right now, e.g. "pipe_read /tmp/x/capture.raw" or
    "do_epoll_wait anon_inode:[eventpoll]"; None while it runs or if it cannot be seen.

    Needs the right to trace the process (it is this user's child, or ptrace is not
    restricted); the first argument is taken as a file descriptor only if it is one open.
    """
    task = Path(f"/proc/{pid}/task/{tid}")
    try:
        syscall = (task / "syscall").read_text().split()
        wchan = (task / "wchan").read_text().strip()
    except OSError:
        return None
    if not syscall or syscall[0] == "running" or wchan in ("", "0"):
        return None
    if len(syscall) > 1:
        try:
            return f"{wchan} {os.readlink(f'/proc/{pid}/fd/{int(syscall[1], 16)}')}"
        except (OSError, ValueError):
            pass
    return wchan
