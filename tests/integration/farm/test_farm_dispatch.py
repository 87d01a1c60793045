"""workers.dispatch on the shared Redis: every message lands on its queue, and each queue is declared once per
send, not once per message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from kombu import Producer

from farm.jobs.policy import Message
from tests.integration.farm.conftest import SharedRedisDb
from workers import dispatch
from workers.app import make_app

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[str]:
    held = SharedRedisDb()
    try:
        yield held.acquire()
    finally:
        held.release()


def test_every_message_reaches_its_queue_and_each_queue_is_declared(broker: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app = make_app(broker)
    declared: list[str] = []
    messages = [Message(i, "cpu-new" if i % 3 else "gpu-new", "train" if i % 3 == 0 else "all") for i in range(30)]
    original = Producer.maybe_declare

    def spy(self, entity, *args, **kwargs):  # type: ignore[no-untyped-def]
        declared.append(entity.name)
        return original(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", spy)
    assert dispatch.send(app, messages) == 30
    client = redis.Redis.from_url(broker)
    try:
        assert client.llen("cpu-new") == 20 and client.llen("gpu-new") == 10
        # The queues are declared (bound), as a worker consuming from them expects; once each for the 30 messages.
        assert client.exists("_kombu.binding.cpu-new") and client.exists("_kombu.binding.gpu-new")
        assert sorted(declared) == ["cpu-new", "gpu-new"]
        bodies = [json.loads(m) for m in client.lrange("gpu-new", 0, -1)]
        tasks = {b["headers"]["task"] for b in bodies}
        assert tasks == {"farm.qat_train"}  # the stage decides the task name
    finally:
        client.close()
        app.close()


def test_a_batched_message_is_the_one_send_task_writes(broker: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """dispatch builds batched messages with Celery's create_task_message and send_task_message, routing once
    per queue; what lands on the broker matches app.send_task's message field for field (ids aside)."""
    app = make_app(broker)
    client = redis.Redis.from_url(broker)
    try:
        app.send_task("farm.run_job", args=[7], queue="same", routing_key="same")

        def no_fallback(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("the batched path fell back to send_task")

        monkeypatch.setattr(app, "send_task", no_fallback)
        assert dispatch.send(app, [Message(7, "same", "all"), Message(8, "same", "all")]) == 2
        reference, batched, _ = (json.loads(m) for m in reversed(client.lrange("same", 0, -1)))

        def shape(message: dict) -> dict:
            headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
            props = {k: v for k, v in message["properties"].items() if k not in ("correlation_id", "delivery_tag")}
            return {"headers": headers, "properties": props, "body": message["body"], "type": message["content-type"]}

        assert shape(batched) == shape(reference)
        assert batched["headers"]["id"] != reference["headers"]["id"]
        assert batched["headers"]["root_id"] == batched["headers"]["id"]  # a root task, as send_task makes it
    finally:
        client.close()
        app.close()


def test_inside_a_worker_task_batched_messages_carry_its_links_and_limits(broker: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Sent from a running task (a reference releasing its dependents), a message names that task as its parent
    and root, and carries the registered task's time limits, as send_task writes them."""
    app = make_app(broker)

    @app.task(name="farm.run_job", time_limit=600, soft_time_limit=540)
    def run_job(job_id: int) -> None:  # registered as a worker has it
        pass

    app.finalize()
    request = type("Request", (), {"id": "parent-task", "root_id": "root-task", "delivery_info": {}})()
    running = type("Task", (), {"request": request, "add_trail": lambda self, result: None})()
    monkeypatch.setattr(type(app), "current_worker_task", property(lambda self: running))
    client = redis.Redis.from_url(broker)
    try:
        app.send_task("farm.run_job", args=[1], queue="linked", routing_key="linked")
        assert dispatch.send(app, [Message(1, "linked", "all"), Message(2, "linked", "all")]) == 2
        reference, batched, _ = (json.loads(m)["headers"] for m in reversed(client.lrange("linked", 0, -1)))
        expected = ("parent-task", "root-task", [600, 540])
        assert (reference["parent_id"], reference["root_id"], reference["timelimit"]) == expected
        assert (batched["parent_id"], batched["root_id"], batched["timelimit"]) == expected
    finally:
        client.close()
        app.close()
