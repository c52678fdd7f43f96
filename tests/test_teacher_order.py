"""The teacher serves shards in order: the lowest shard whose task has started gets the device next."""
from __future__ import annotations

import threading
import time

from tasks.build_tasks import ShardOrderedLock


def test_the_lowest_started_shard_is_served_first_even_if_it_is_ready_last():
    lock = ShardOrderedLock()
    order: list[int] = []

    def shard_task(shard: int, decode_s: float):
        with lock.enter(shard) as turn:
            time.sleep(decode_s)  # decoding: shard 0 is ready last, yet must go first
            with lock.hold(turn):
                order.append(shard)

    threads = [threading.Thread(target=shard_task, args=a) for a in ((2, 0.1), (1, 0.05), (0, 0.3))]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2]


def test_a_failed_shard_task_leaves_the_queue():
    lock = ShardOrderedLock()
    try:
        with lock.enter(0):
            raise RuntimeError("decode failed")
    except RuntimeError:
        pass
    done = []
    with lock.enter(1) as turn, lock.hold(turn):
        done.append(1)
    assert done == [1]


def test_teacher_tasks_are_tagged_only_when_a_server_limit_can_act_on_the_tag(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from tasks.build_tasks import TEACHER_TAG, teacher_tags

    assert teacher_tags() == []  # no limit: no per-task slot request
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"tag:{TEACHER_TAG}", limit=1))
        try:
            assert teacher_tags() == [TEACHER_TAG]
        finally:
            client.delete_global_concurrency_limit_by_name(f"tag:{TEACHER_TAG}")
    assert teacher_tags() == []
