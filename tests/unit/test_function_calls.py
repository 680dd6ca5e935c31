"""The function-call flow of the conversation machine: calls run, their outputs, the answer
after them, calls overtaken by the person, goodbye, and the "working" chime."""

from __future__ import annotations

from support.machine_driver import Driver, of, sent
from talkbox.core.conversation import (
    END_CONVERSATION_TOOL,
    INTERRUPTED_CALL_OUTPUT,
    MAX_CALLS_PER_RESPONSE,
    TIMER_FOLLOW_UP,
    TIMER_RESPONSE,
    TIMER_TOOL,
    TOO_MANY_CALLS_OUTPUT,
)
from talkbox.core.events import (
    AudioDelta,
    CancelResponse,
    CreateResponse,
    FunctionCall,
    ResponseCreated,
    ResponseDone,
    SendFunctionOutput,
)
from talkbox.core.inputs import (
    ConversationEnded,
    EndOfReply,
    PlaybackDrained,
    PlayChime,
    RunTool,
    State,
    StateChanged,
    StopRequested,
    ToolFinished,
    WakeWord,
)


def asking(d: Driver, *calls: tuple[str, str], audio_samples: int = 0) -> list[object]:
    """The person asks; the service's response "r1" calls `calls` (name, call id)."""
    d.start_listening()
    d.speak(600)
    out: list[object] = list(d.server(ResponseCreated("r1")))
    if audio_samples:
        out += d.server(AudioDelta("r1", "i0", 0, bytes(audio_samples * 2)))
    for name, call_id in calls:
        out += d.server(FunctionCall("r1", call_id, name, "{}"))
    return out


def test_a_call_is_run_and_its_output_sent_then_the_answer_is_asked_for() -> None:
    d = Driver()
    out = asking(d, ("get_current_time", "call_1"))
    assert of(RunTool, out) == [RunTool(1, "call_1", "get_current_time", "{}")]
    assert TIMER_TOOL in d.timers
    done = d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.RESPONDING, "the answer is still to come"
    assert CreateResponse() not in sent(done), "not before the result"
    assert TIMER_FOLLOW_UP not in d.timers
    result = d(ToolFinished(1, "call_1", '{"time": "14:05"}'))
    assert sent(result) == [SendFunctionOutput("call_1", '{"time": "14:05"}'), CreateResponse()]
    assert TIMER_TOOL not in d.timers
    assert TIMER_RESPONSE in d.timers
    d.respond("r2", "i2", samples=2400)
    d.server(ResponseDone("r2", "completed"))
    back = d(PlaybackDrained(d.m.enqueued_samples))
    assert StateChanged(State.LISTENING, "answer played") in back


def test_a_result_before_the_response_is_done_is_sent_and_the_answer_asked_at_done() -> None:
    d = Driver()
    asking(d, ("get_current_time", "call_1"))
    early = d(ToolFinished(1, "call_1", "{}"))
    assert sent(early) == [SendFunctionOutput("call_1", "{}")]
    done = d.server(ResponseDone("r1", "completed"))
    assert CreateResponse() in sent(done)


def test_several_calls_in_one_response_are_answered_once_all_are_in() -> None:
    d = Driver()
    out = asking(d, ("a", "call_1"), ("b", "call_2"))
    assert [r.call_id for r in of(RunTool, out)] == ["call_1", "call_2"]
    d.server(ResponseDone("r1", "completed"))
    first = d(ToolFinished(1, "call_2", "2"))
    assert sent(first) == [SendFunctionOutput("call_2", "2")]
    second = d(ToolFinished(1, "call_1", "1"))
    assert sent(second) == [SendFunctionOutput("call_1", "1"), CreateResponse()]


def test_a_response_that_spoke_before_calling_plays_out_and_waits_for_the_result() -> None:
    d = Driver()
    asking(d, ("get_current_time", "call_1"), audio_samples=4800)
    done = d.server(ResponseDone("r1", "completed"))
    assert EndOfReply() in done
    drained = d(PlaybackDrained(d.m.enqueued_samples))
    assert d.m.state is State.RESPONDING and not of(StateChanged, drained)
    assert CreateResponse() in sent(d(ToolFinished(1, "call_1", "{}")))


def test_a_slow_tool_gets_the_working_chime_then_again_while_it_runs() -> None:
    d = Driver()
    asking(d, ("slow", "call_1"))
    assert PlayChime("working") in d.fire(TIMER_TOOL)
    assert TIMER_TOOL in d.timers, "and again later"
    d(ToolFinished(1, "call_1", "{}"))
    assert TIMER_TOOL not in d.timers


def test_a_barge_in_abandons_running_calls_and_tells_the_model() -> None:
    d = Driver(barge_in="wake")
    asking(d, ("slow", "call_1"), audio_samples=4800)
    barge = d(WakeWord(played_samples=100))
    assert CancelResponse("r1") in sent(barge)
    assert SendFunctionOutput("call_1", INTERRUPTED_CALL_OUTPUT) in sent(barge)
    assert TIMER_TOOL not in d.timers
    assert d(ToolFinished(1, "call_1", "{}")) == [], "a late result is dropped"


def test_calls_of_an_interrupted_response_are_never_run() -> None:
    d = Driver(barge_in="wake")
    asking(d, audio_samples=4800)
    d(WakeWord(played_samples=100))
    assert of(RunTool, d.server(FunctionCall("r1", "call_9", "a", "{}"))) == []


def test_a_result_of_an_ended_conversation_is_dropped() -> None:
    d = Driver()
    asking(d, ("slow", "call_1"))
    d(StopRequested("ctl stop"))
    assert d.m.state is State.IDLE
    assert d(ToolFinished(1, "call_1", "{}")) == []


def test_goodbye_ends_the_conversation_after_the_farewell_has_played() -> None:
    d = Driver()
    out = asking(d, (END_CONVERSATION_TOOL, "call_1"), audio_samples=4800)
    assert of(RunTool, out) == [], "the device does not run it: it acts on it"
    done = d.server(ResponseDone("r1", "completed"))
    assert EndOfReply() in done and d.m.state is State.RESPONDING
    ended = d(PlaybackDrained(d.m.enqueued_samples))
    assert d.m.state is State.IDLE
    assert PlayChime("done") in ended
    assert StateChanged(State.IDLE, "the person said goodbye") in ended
    [conversation_ended] = of(ConversationEnded, ended)
    assert conversation_ended.failure is None


def test_goodbye_without_a_farewell_ends_at_once() -> None:
    d = Driver()
    asking(d, (END_CONVERSATION_TOOL, "call_1"))
    d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.IDLE


def test_more_calls_than_the_bound_are_answered_with_an_error_not_run() -> None:
    d = Driver()
    calls = [(f"t{i}", f"call_{i}") for i in range(MAX_CALLS_PER_RESPONSE + 2)]
    out = asking(d, *calls)
    assert len(of(RunTool, out)) == MAX_CALLS_PER_RESPONSE
    refused = [e for e in sent(out) if isinstance(e, SendFunctionOutput)]
    assert [e.output for e in refused] == [TOO_MANY_CALLS_OUTPUT] * 2
