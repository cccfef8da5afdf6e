"""The queue: deduplicated, bounded, due times, in-flight re-hints."""

from __future__ import annotations

from dicom_archive.daemon.jobqueue import Job, JobQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hints_for_one_path_are_deduplicated() -> None:
    queue = JobQueue(10)
    for _ in range(5):
        assert queue.hint("/in/a")
    assert queue.depth() == 1
    assert [j.path for j in queue.take(10, 0)] == ["/in/a"]


def test_the_queue_is_bounded_and_says_when_it_dropped_hints() -> None:
    queue = JobQueue(3)
    assert all(queue.hint(f"/in/{i}") for i in range(3))
    assert not queue.hint("/in/overflow")
    assert queue.depth() == 3
    assert queue.consume_overflow() and not queue.consume_overflow()


def test_jobs_wait_until_due() -> None:
    clock = Clock()
    queue = JobQueue(10, clock=clock)
    queue.hint("/in/a", delay=5)
    assert queue.take(10, 0) == []
    clock.now += 5
    assert [j.path for j in queue.take(10, 0)] == ["/in/a"]


def test_a_hint_during_flight_brings_the_path_back_after_done() -> None:
    clock = Clock()
    queue = JobQueue(10, clock=clock)
    queue.hint("/in/a")
    [job] = queue.take(10, 0)
    queue.hint("/in/a")  # rewritten while being imported
    queue.done(job.path, settle=1)
    clock.now += 1
    assert [j.path for j in queue.take(10, 0)] == ["/in/a"]
    queue.done("/in/a", settle=1)
    assert queue.idle()


def test_put_back_keeps_what_the_worker_saw() -> None:
    clock = Clock()
    queue = JobQueue(1, clock=clock)
    queue.hint("/in/a")
    [_taken] = queue.take(1, 0)
    queue.hint("/in/b")  # fills the queue while a is in flight
    queue.put_back(Job("/in/a", (1, 2, 3, 4), clock.now, 2), delay=0)  # never dropped
    taken = queue.take(5, 0)
    assert {j.path for j in taken} == {"/in/a", "/in/b"}
    assert next(j for j in taken if j.path == "/in/a").attempts == 2


def test_close_wakes_the_consumer() -> None:
    queue = JobQueue(10)
    queue.close()
    assert queue.take(10, 30) == []
