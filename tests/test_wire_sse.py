"""The pass-through scan of SSE bytes: frames counted, the run's first terminal event found."""

from __future__ import annotations

from gateway.wire.sse import EndOfRunDetector


def test_the_stream_scan_counts_frames_and_finds_the_first_terminal_event_across_chunks() -> None:
    stream = (
        b'event: RunStarted\ndata: {"event":"RunStarted","content":"event: RunCompleted"}\n\n'
        b'event: RunCancelled\ndata: {"event":"RunCancelled"}\n\n'
        b'event: RunCompleted\ndata: {"event":"RunCompleted"}\n\n'
    )
    for size in (1, 2, 7, 64, len(stream)):
        scan = EndOfRunDetector()
        for start in range(0, len(stream), size):
            scan.feed(stream[start : start + size])
        assert (scan.terminal, scan.frames) == ("RunCancelled", 3), size


def test_the_error_frame_of_a_cut_non_run_stream_is_json() -> None:
    import json

    from gateway.api.forwarding import generic_error_frame

    frame = generic_error_frame("Upstream os-a: it's \"gone\"").decode()
    event, data = frame.rstrip("\n").split("\n")
    assert event == "event: error" and frame.endswith("\n\n")
    assert json.loads(data[len("data: ") :]) == {"detail": "Upstream os-a: it's \"gone\""}


def test_only_a_whole_terminal_event_name_ends_the_run_in_any_chunking() -> None:
    stream = (
        b'event: RunContentCompleted\ndata: {"event":"RunContentCompleted"}\n\n'
        b'event: WorkflowStepCompleted\ndata: {"event":"WorkflowStepCompleted"}\n\n'
        b'event: ReasoningContentDeltaOfSomeVeryLongEventName\ndata: {}\n\n'
        b'event: WorkflowCompleted\ndata: {"event":"WorkflowCompleted"}\n\n'
    )
    cut = len(stream) - len(b'event: WorkflowCompleted\ndata: {"event":"WorkflowCompleted"}\n\n')
    for first in range(1, len(stream)):  # every place the stream can be cut in two
        scan = EndOfRunDetector()
        scan.feed(stream[:first])
        assert scan.terminal is None or first > cut, first
        scan.feed(stream[first:])
        assert (scan.terminal, scan.frames) == ("WorkflowCompleted", 4), first
