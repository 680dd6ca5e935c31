"""Host side of tests/system/vm_test.sh: TLS material for the guest, and the fake Realtime service.

fake_service.py make-ca DIR IP
    A throwaway CA (DIR/ca.pem, which the guest trusts through its system store) and a
    server certificate for IP (DIR/server.pem: key and chain).
fake_service.py serve --tls DIR/server.pem --key-file KEY --port-file F --record R
    Serves tests/support/fake_realtime.py over TLS on 127.0.0.1 (a free port, written to F)
    until SIGTERM or SIGINT, then writes what it recorded to R as JSON: every session (its
    redacted path, how it authenticated, the client event types), refused handshakes and
    protocol violations. The API key itself is never written anywhere.
fake_service.py verify R
    Prints one "ok NAME" / "FAILED NAME" line per expectation on the record of a VM run
    in which `talkbox ctl wake` started exactly one conversation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))

from support.fake_realtime import FakeRealtimeServer  # noqa: E402

EXPECTED_PATH = "/openai/v1/realtime?model=gpt-realtime"


def make_ca(directory: Path, ip: str) -> None:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="talkbox VM test (throwaway)")
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    authority.issue_cert(ip).private_key_and_cert_chain_pem.write_to_path(
        str(directory / "server.pem")
    )


def _snapshot(server: FakeRealtimeServer) -> dict[str, Any]:
    sessions = []
    for session in server.sessions:
        sessions.append(
            {
                "index": session.index,
                "path": session.path,
                "dialect": str(session.dialect),
                "vendor": session.vendor,
                "model": session.model,
                "auth_method": session.auth_method,
                "client_event_types": [
                    event.get("type") if isinstance(event, dict) else "<not an object>"
                    for event in session.client_events
                ],
                "session_update_count": len(session.client_events_of("session.update")),
                "server_event_types": session.server_event_types(),
                "closed": session.closed,
                "close_code": session.close_code,
                "dropped": session.dropped,
            }
        )
    return {
        "sessions": sessions,
        "rejected_handshakes": [
            {"path": r.path, "status": r.status, "code": r.code} for r in server.rejected_handshakes
        ],
        "protocol_violations": [
            {"session_index": v.session_index, "problems": v.problems}
            for v in server.protocol_violations
        ],
    }


def serve(tls: Path, key_file: Path, port_file: Path, record: Path) -> int:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls))
    api_key = key_file.read_text().strip()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = FakeRealtimeServer(api_key=api_key, ssl=context).start_in_thread()
    try:
        temporary = port_file.with_suffix(".tmp")
        temporary.write_text(f"{service.port}\n")
        os.replace(temporary, port_file)
        while not stop.wait(0.5):
            pass
        snapshot = service.call(lambda: _snapshot(service.server))
    finally:
        service.stop()
    record.write_text(json.dumps(snapshot, indent=2) + "\n")
    return 0


def verify(record_path: Path) -> int:
    record = json.loads(record_path.read_text())
    sessions = record["sessions"]
    failed = 0

    def check(name: str, passed: bool) -> None:
        nonlocal failed
        print(f"{'ok' if passed else 'FAILED'} {name}")
        failed += not passed

    check("the fake service saw exactly one session (the one ctl wake started)", len(sessions) == 1)
    session = sessions[0] if sessions else {}
    check(
        "it passed the fake's api-key check (the key came through LoadCredential=)",
        session.get("auth_method") == "api-key",
    )
    check(
        f"it used the Azure GA path {EXPECTED_PATH} (TLS verified against the guest's store)",
        session.get("path") == EXPECTED_PATH and session.get("vendor") == "azure",
    )
    types = session.get("client_event_types", [])
    check(
        "the first client event was session.update, and the service acknowledged it",
        bool(types)
        and types[0] == "session.update"
        and "session.updated" in session.get("server_event_types", []),
    )
    check("no client event broke the protocol", not record["protocol_violations"])
    check("no handshake was refused", not record["rejected_handshakes"])
    check(
        "talkbox closed the session itself with a normal close (1000)",
        session.get("closed") is True and session.get("close_code") == 1000,
    )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("make-ca")
    ca.add_argument("directory", type=Path)
    ca.add_argument("ip")
    server = commands.add_parser("serve")
    server.add_argument("--tls", type=Path, required=True)
    server.add_argument("--key-file", type=Path, required=True)
    server.add_argument("--port-file", type=Path, required=True)
    server.add_argument("--record", type=Path, required=True)
    check = commands.add_parser("verify")
    check.add_argument("record", type=Path)
    args = parser.parse_args()
    if args.command == "make-ca":
        make_ca(args.directory, args.ip)
        return 0
    if args.command == "serve":
        return serve(args.tls, args.key_file, args.port_file, args.record)
    return verify(args.record)


if __name__ == "__main__":
    sys.exit(main())
