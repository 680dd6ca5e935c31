"""Resident memory of a live process, as the kernel reports it in /proc/PID/status.

`read_memory(pid)` gives VmRSS (resident now) and VmHWM (the peak of VmRSS); `reset_peak(pid)`
starts the peak afresh (clear_refs "5"), so the peak of one episode (a flood of audio) can be
read on its own, without the start-up's model loading in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS
    hwm_mib: float  # VmHWM: the peak VmRSS since start or since reset_peak()

    def __str__(self) -> str:
        return f"VmRSS {self.rss_mib:.1f} MiB, VmHWM {self.hwm_mib:.1f} MiB"


def read_memory(pid: int) -> Memory:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    if len(fields) != 2:
        raise RuntimeError(f"process {pid} reports no VmRSS/VmHWM (a kernel thread, or gone)")
    return Memory(rss_mib=fields["VmRSS"], hwm_mib=fields["VmHWM"])


def reset_peak(pid: int) -> None:
    """Set VmHWM back to the current VmRSS (the process must be this user's)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
