"""worker.events.new_event_id: random version 4 UUIDs, never the same in a forked child and its parent."""

from __future__ import annotations

import os
import uuid

from worker import events


def test_event_ids_are_distinct_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = [events.new_event_id() for _ in range(3 * events._RANDOM_BATCH + 5)]  # across several reads
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == event_id


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    events.new_event_id()  # random bytes for the next ids are now waiting in this process
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, ",".join(events.new_event_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parents = {events.new_event_id() for _ in range(5)}
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split(","))
    os.waitpid(child, 0)
    assert len(childs) == 5
    assert not parents & childs
