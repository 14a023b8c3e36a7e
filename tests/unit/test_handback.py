"""Hand-backs the database refused are kept and made, in order, once it answers again."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from tests.plugins.workers import wait_for
from workers.handback import HandBack, PendingHandBacks


def _handback(job_id: str) -> HandBack:
    return HandBack(job_id, "caption", 0, seqs=(1, 2), uncount=(1, 2), publish=(1, 2))


def test_kept_hand_backs_are_made_in_order_once_the_database_answers() -> None:
    refusals = 3
    made: list[str] = []

    def hand_back(handback: HandBack) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise OperationalError("UPDATE items", {}, ConnectionRefusedError("connection refused"))
        made.append(handback.job_id)

    pending = PendingHandBacks(hand_back, retry_s=0.01)
    pending.keep(_handback("a"))
    pending.keep(_handback("b"))
    wait_for(lambda: len(pending) == 0, 10, "the kept hand-backs were never made")
    assert made == ["a", "b"] and refusals == 0
    # The thread ended with nothing left; a later refusal starts another.
    refusals = 1
    pending.keep(_handback("c"))
    wait_for(lambda: made == ["a", "b", "c"], 10, "a hand-back kept later was never made")


def test_a_hand_back_that_fails_for_another_reason_is_not_tried_forever() -> None:
    tried: list[str] = []

    def hand_back(handback: HandBack) -> None:
        tried.append(handback.job_id)
        if handback.job_id == "bug":
            raise RuntimeError("not a database fault")

    pending = PendingHandBacks(hand_back, retry_s=0.01)
    pending.keep(_handback("bug"))
    pending.keep(_handback("b"))
    wait_for(lambda: len(pending) == 0, 10, "the kept hand-backs were never settled")
    assert tried == ["bug", "b"]
