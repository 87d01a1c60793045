"""workers.dispatch on the shared Redis: every message lands on its queue, and each queue is declared once per
send, not once per message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from kombu import Producer

from farm.store.queries import Message
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
