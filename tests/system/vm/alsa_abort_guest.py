"""Guest side of tests/system/alsa_abort_vm.sh: counts alsa-lib aborts in playback on `default`.

For each round, for each configuration RATE:CHANNELS, it runs PLAYERS copies of
alsa_abort_play.py at once on ALSA's `default` (plug -> dmix on the VM's HDA card) for SLOT
seconds, with LOAD busy loops beside them, and starts a player again as soon as one dies. A
player killed by SIGABRT is an abort; its stderr's last line (the assertion) is kept. Writes one
line per slot and a total per configuration to stdout and to ./results.

Settings come from the environment: ALSA_ABORT_CONFIGS ("24000:1 48000:1 48000:2"),
ALSA_ABORT_SLOT_S (300), ALSA_ABORT_ROUNDS (2), ALSA_ABORT_PLAYERS (3), ALSA_ABORT_LOAD (2).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = "/opt/talkbox/venv/bin/python"
PLAYER = str(HERE / "alsa_abort_play.py")
_SPAWN_GAP_S = 5.0


def say(line: str, results: Path) -> None:
    print(line, flush=True)
    with results.open("a") as out:
        out.write(line + "\n")


def run_slot(rate: int, channels: int, slot_s: float, players: int, load: int, log: Path):
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)
    ]
    started = time.monotonic()
    deadline = started + slot_s
    aborts = other = 0
    assertions: collections.Counter[str] = collections.Counter()
    summaries: list[str] = []

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, PLAYER, str(rate), str(channels), str(slot_s + 60)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # One at a time: PortAudio's device scan opens the card's hw device for a moment, and a
    # dmix that starts then cannot open it ("unable to open slave").
    running = []
    for _ in range(players):
        running.append(spawn())
        time.sleep(_SPAWN_GAP_S)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for i, proc in enumerate(running):
            code = proc.poll()
            if code is None:
                continue
            out, err = proc.communicate()
            tail = [line for line in err.splitlines() if line.strip()][-1:] or ["(no stderr)"]
            at = time.monotonic() - started
            with log.open("a") as f:
                f.write(f"--- {rate}:{channels} player exit {code} at {at:.0f}s\n{err}{out}\n")
            if code == -signal.SIGABRT:
                aborts += 1
                assertions[tail[0]] += 1
            else:
                other += 1
                time.sleep(_SPAWN_GAP_S)  # a failed open: let the others' scans end
            running[i] = spawn()
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode == -signal.SIGABRT:
            aborts += 1
            tail = [line for line in err.splitlines() if line.strip()][-1:] or ["(no stderr)"]
            assertions[tail[0]] += 1
        summaries.extend(line for line in out.splitlines() if line.startswith("rate="))
    for proc in busy:
        proc.kill()
        proc.wait()
    return aborts, other, assertions, summaries


def main() -> int:
    configs = [
        tuple(int(part) for part in item.split(":"))
        for item in os.environ.get("ALSA_ABORT_CONFIGS", "24000:1 48000:1 48000:2").split()
    ]
    slot_s = float(os.environ.get("ALSA_ABORT_SLOT_S", "300"))
    rounds = int(os.environ.get("ALSA_ABORT_ROUNDS", "2"))
    players = int(os.environ.get("ALSA_ABORT_PLAYERS", "3"))
    load = int(os.environ.get("ALSA_ABORT_LOAD", "2"))
    results = Path.cwd() / "results"
    log = Path.cwd() / "players.log"
    say(f"settings: configs={configs} slot={slot_s:.0f}s rounds={rounds} players={players} "
        f"load={load} busy loops", results)
    totals: dict[tuple[int, ...], list[int]] = {c: [0, 0] for c in configs}
    for round_number in range(1, rounds + 1):
        for rate, channels in configs:
            aborts, other, assertions, summaries = run_slot(
                rate, channels, slot_s, players, load, log
            )
            totals[(rate, channels)][0] += aborts
            totals[(rate, channels)][1] += other
            say(f"round {round_number} {rate} Hz x{channels}: {aborts} aborts, {other} other "
                f"exits in {players} x {slot_s:.0f} s; {dict(assertions)}", results)
            for line in summaries:
                say(f"    {line}", results)
    for (rate, channels), (aborts, other) in totals.items():
        minutes = rounds * players * slot_s / 60
        say(f"TOTAL {rate} Hz x{channels}: {aborts} aborts, {other} other exits in "
            f"{minutes:.0f} player-minutes", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
