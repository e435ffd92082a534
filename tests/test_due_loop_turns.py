"""Tasks and the due loop take turns in a worker process, tasks first (deliveries/dueloop.py):
a batch of retries waits for the tasks running or waiting, and a task that comes during a
batch waits for it to end; tasks never wait for each other."""

import threading
import time

from deliveries.dueloop import Turns
from tests.support import wait_until


def started_in_thread(action) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run():
        action()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_a_batch_waits_for_a_running_task():
    turns = Turns()
    turns.task_started()
    _, batch_began = started_in_thread(lambda: turns.begin_batch(timeout=5))
    assert not batch_began.wait(0.2)  # the task has the process
    turns.task_finished()
    assert batch_began.wait(10)
    turns.end_batch()


def test_a_batch_waits_no_longer_than_its_timeout():
    turns = Turns()
    turns.task_started()
    began = time.monotonic()
    turns.begin_batch(timeout=0.2)  # a task that never ends cannot hold retries back for good
    assert 0.15 <= time.monotonic() - began < 10
    turns.end_batch()
    turns.task_finished()


def test_a_task_that_comes_during_a_batch_starts_when_it_ends():
    turns = Turns()
    turns.begin_batch(timeout=1)
    _, task_began = started_in_thread(turns.task_started)
    assert not task_began.wait(0.2)
    turns.end_batch()
    assert task_began.wait(10)
    turns.task_finished()


def test_tasks_never_wait_for_each_other():
    turns = Turns()
    turns.task_started()
    _, second_began = started_in_thread(turns.task_started)
    assert second_began.wait(10)  # a pool of threads runs its tasks side by side
    turns.task_finished()
    turns.task_finished()


def test_a_waiting_task_goes_before_the_next_batch():
    turns = Turns()
    turns.begin_batch(timeout=1)
    _, task_began = started_in_thread(turns.task_started)
    wait_until(lambda: turns.waiting == 1, timeout=10, message="the task waiting for the batch")
    turns.end_batch()
    _, next_batch = started_in_thread(lambda: turns.begin_batch(timeout=5))
    assert task_began.wait(10)
    assert not next_batch.wait(0.2)  # the task runs; the next batch waits for it
    turns.task_finished()
    assert next_batch.wait(10)
    turns.end_batch()
