"""The soak bench's accounting on scripted timelines: lost and late frames are seen."""

from __future__ import annotations

from duplex.bench.client import Conversation
from duplex.bench.soak import Soak, _Replies, lost_and_late, render


async def _no_mic(pcm: bytes) -> None:
    return None


def test_lost_and_late_frames() -> None:
    # The first 80 ms come at once (the lead), the rest one frame every 20 ms.
    steady = [max(0.0, i * 0.02 - 0.08) for i in range(50)]
    assert lost_and_late(steady, 50) == (0, 0)
    assert lost_and_late(steady, 53) == (3, 0)  # three never came
    gap = [*steady[:20], *(t + 0.3 for t in steady[20:])]  # a 300 ms stall mid-reply
    lost, late = lost_and_late(gap, 50)
    assert lost == 0 and late >= 1


def test_replies_are_split_at_their_final_event_and_flushes_are_left_out() -> None:
    conv = Conversation(_no_mic)
    for i in range(10):
        conv.heard(1.0 + i * 0.02, b"")
    conv.got(1.3, {"type": "reply", "text": "a", "final": True, "frames": 10})
    for i in range(5):
        conv.heard(2.0 + i * 0.02, b"")
    conv.got(2.2, {"type": "playback", "action": "flush"})
    for i in range(4):
        conv.heard(3.0 + i * 0.02, b"")
    conv.got(3.2, {"type": "error", "code": "busy", "message": "x"})
    conv.got(3.3, {"type": "reply", "text": "b", "final": True, "frames": 6})
    replies = _Replies(conv)
    finished, errors = replies.drain()
    assert [(len(frames), event["text"]) for frames, event in finished] == [(10, "a"), (4, "b")]
    assert [e["code"] for e in errors] == ["busy"]
    assert replies.drain() == ([], [])
    assert lost_and_late(finished[1][0], 6)[0] == 2


def test_the_table_folds_the_tail_into_the_last_minute() -> None:
    soak = Soak(started=0.0)
    soak.minutes[0].lost = 1
    soak.minutes[1].lost = 2  # turns that ended after a one-minute soak
    text = render(soak, sessions=2, minutes=1)
    assert sorted(soak.minutes) == [0] and soak.minutes[0].lost == 3
    assert "lost" in text.splitlines()[1]
