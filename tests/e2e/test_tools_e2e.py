"""Function calls through the real `talkbox run`: the fake service answers a turn with
scripted calls, the daemon runs its tools and answers them; every event it sends is checked
against the openai type models (tool declarations and function_call_output items too)."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime

import numpy as np
import pytest

from e2e.conftest import API_KEY, one_breath, service_config
from support.audio_match import as_pcm, locate
from support.daemon import DaemonRun, run_daemon
from support.fake_realtime import ServerThread
from support.service import sessions
from support.speech import concat, silence
from talkbox.audio.chimes import chime

pytestmark = pytest.mark.slow

SPEAKER_RATE = 24000


def ask(tmp_path, fake_service: ServerThread, command: str, config: str,
        until_log: str = "state idle") -> tuple[bytes, str]:
    """One conversation: the wake word and `command` in one breath; what the room heard and
    the daemon's log once `until_log` appeared."""
    spoken, _ = one_breath("hey jarvis", command)
    with run_daemon(tmp_path, config, api_key=API_KEY) as run:
        run.wait_ready()
        run.say(concat(silence(1.5), spoken, silence(1.0)).tobytes())
        run.wait_for_log(until_log, timeout=30)
        time.sleep(1.0)  # the last chime plays out
        code, _ = run.terminate()
        heard, log = run.heard(), run.log()
    assert code == 0, log
    assert fake_service.server.protocol_violations == [], log
    return heard, log


def test_the_time_tool_is_run_and_the_answer_after_it_plays(
    tmp_path, fake_service, reply_speech
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.function_calls = [[("get_current_time", "{}")]]
    before = datetime.now().astimezone()
    heard, log = ask(tmp_path, fake_service, "what time is it",
                     service_config(fake_service.url_base))
    after = datetime.now().astimezone()

    [session] = sessions(fake_service)
    assert [tool["name"] for tool in session.tools] == [
        "end_conversation", "get_current_time", "speaker_volume", "set_timer", "set_alarm",
        "list_timers", "cancel_timer"]
    [call] = session.function_calls_made
    [output] = session.function_outputs
    assert output["call_id"] == call["call_id"]
    answer = json.loads(output["output"])
    assert answer["time"] in {before.strftime("%H:%M"), after.strftime("%H:%M")}
    assert answer["date"] in {before.date().isoformat(), after.date().isoformat()}
    assert len(session.client_events_of("response.create")) == 2, "the turn, then after the call"
    assert reply_speech in heard
    assert "tool get_current_time answered in" in log


def test_goodbye_ends_the_conversation_without_waiting_out_the_follow_up(
    tmp_path, fake_service
) -> None:
    fake_service.server.function_calls = [[("end_conversation", "{}")]]
    config = service_config(fake_service.url_base, follow_up=20.0)
    started = time.monotonic()
    heard, log = ask(tmp_path, fake_service, "thanks that is all", config,
                     until_log="state idle (the person said goodbye)")
    assert time.monotonic() - started < 20.0, "did not wait out follow_up_seconds"

    [session] = sessions(fake_service)
    assert session.function_outputs == [], "nothing to answer: the conversation is over"
    assert len(session.client_events_of("response.create")) == 1
    assert chime("done", SPEAKER_RATE, 0.6) in heard
    assert "state listening (answer" not in log


def test_an_unknown_tool_and_unreadable_arguments_are_answered_and_the_talk_goes_on(
    tmp_path, fake_service, reply_speech
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.function_calls = [[("open_pod_bay_doors", "{}"),
                                           ("get_current_time", "{not json")]]
    heard, log = ask(tmp_path, fake_service, "open the pod bay doors",
                     service_config(fake_service.url_base))

    [session] = sessions(fake_service)
    outputs = {o["call_id"]: json.loads(o["output"]) for o in session.function_outputs}
    by_name = {c["name"]: outputs[c["call_id"]] for c in session.function_calls_made}
    assert by_name == {
        "open_pod_bay_doors": {"error": "there is no tool named 'open_pod_bay_doors'"},
        "get_current_time": {"error": "arguments are not valid JSON"},
    }
    assert reply_speech in heard, "the model's answer about it still plays"
    assert "open_pod_bay_doors" in log and "arguments are not valid JSON" in log


def test_tools_switched_off_are_not_offered(tmp_path, fake_service, reply_speech) -> None:
    fake_service.server.reply_pcm = reply_speech
    config = service_config(fake_service.url_base, extra="""
[tools]
end_conversation = false
time = false
timers = false
volume = false
""")
    ask(tmp_path, fake_service, "what time is it", config)
    [session] = sessions(fake_service)
    assert session.tools == []
    assert "tools" not in session.client_events_of("session.update")[0]["session"]


def level_db_of_answer(run: DaemonRun, since: float, answer: bytes) -> float:
    """How loud `answer` played on the speaker after `since`, in dB against the answer as
    the service sent it (found by correlation, which does not care about its level)."""
    heard = as_pcm(run.heard(since)).astype(np.float64)
    sent = as_pcm(answer).astype(np.float64)
    offset, match = locate(heard, sent)
    assert match > 0.99, f"the answer is not among what the speaker played (match {match:.3f})"
    played = heard[offset: offset + len(sent)]
    return 20 * math.log10(np.sqrt(np.mean(played**2)) / np.sqrt(np.mean(sent**2)))


def converse(run: DaemonRun, microphone, command: str, conversations_before: int) -> float:
    """Say the wake word and `command`; wait until the conversation is over; its start."""
    spoken, _ = one_breath("hey jarvis", command)
    started = time.monotonic()
    microphone.speak(concat(spoken, silence(1.0)).tobytes())
    run.wait_for_log("state idle", timeout=30, count=conversations_before + 1)
    return started


def test_the_volume_tool_and_ctl_volume_make_the_answer_quieter_and_a_restart_keeps_it(
    tmp_path, fake_service, reply_speech
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fake_service.server.reply_pcm = reply_speech
    config = service_config(fake_service.url_base, follow_up=1.0)
    env = {"STATE_DIRECTORY": str(state)}
    with run_daemon(tmp_path / "first", config, api_key=API_KEY, extra_env=env) as run:
        run.wait_ready()
        microphone = run.microphone()
        full = level_db_of_answer(run, converse(run, microphone, "what is the capital", 0),
                                  reply_speech)
        fake_service.server.function_calls = [[("speaker_volume",
                                                '{"action": "set", "level": 50}')]]
        by_the_tool = level_db_of_answer(
            run, converse(run, microphone, "speak at half volume", 1), reply_speech)
        assert run.ctl("volume").stdout == "volume: 50\n"
        set_by_ctl = run.ctl("volume", "30")
        assert (set_by_ctl.returncode, set_by_ctl.stdout) == (0, "volume: 30\n")
        by_ctl = level_db_of_answer(run, converse(run, microphone, "what is the capital", 2),
                                    reply_speech)
        refused = run.ctl("volume", "130")
        assert refused.returncode != 0 and "from 0 to 100" in refused.stderr
        code, _ = run.terminate()
        log = run.log()
    assert code == 0, log
    [session_with_call] = [s for s in sessions(fake_service) if s.function_calls_made]
    [output] = session_with_call.function_outputs
    assert json.loads(output["output"]) == {"volume": 50, "previous": 100}
    assert "volume 50 % (software gain)" in log
    assert full == pytest.approx(0.0, abs=0.1)
    assert by_the_tool == pytest.approx(20 * math.log10(0.5), abs=0.3)  # -6.0 dB
    assert by_ctl == pytest.approx(20 * math.log10(0.3), abs=0.3)  # -10.5 dB
    assert (state / "volume").read_text() == "30\n"

    with run_daemon(tmp_path / "restarted", config, api_key=API_KEY, extra_env=env) as run:
        run.wait_ready()
        assert "volume: 30" in run.ctl("status").stdout.splitlines()
        microphone = run.microphone()
        after_restart = level_db_of_answer(
            run, converse(run, microphone, "what is the capital", 0), reply_speech)
        code, _ = run.terminate()
        log = run.log()
    assert code == 0, log
    assert after_restart == pytest.approx(20 * math.log10(0.3), abs=0.3)
