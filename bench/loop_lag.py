"""`python -m bench.loop_lag [--cycles N]`: the daemon's event loop lag, alone.

The wake / answer / barge-in cycles of `bench.daemon_bench` through the real `talkbox run`,
with its debug probe on (shell/loop_lag.py): the worst lateness of a 10 ms timer on the
daemon's loop in each stretch of a state. Idle covers each wake phrase's catch-up; the
conversation covers connecting, the streamed answer and its playing. Goal: at most 10 ms.
Prints one line per stretch and a summary; `python -m bench` reports the two worst.
"""

from __future__ import annotations

import argparse

from bench.daemon_bench import measure_loop_lag


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_lag", description=__doc__)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    lag = measure_loop_lag(args.cycles)
    print("idle stretches (ms):", " ".join(f"{ms:.1f}" for ms in lag.idle_ms))
    print("conversation stretches (ms):", " ".join(f"{ms:.1f}" for ms in lag.conversation_ms))
    print(f"worst: idle {max(lag.idle_ms):.1f} ms, conversation {max(lag.conversation_ms):.1f} ms")


if __name__ == "__main__":
    main()
