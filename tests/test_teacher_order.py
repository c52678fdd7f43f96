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


def test_teacher_decode_threads_keep_order_and_quarantine_bad_images():
    """The threaded teacher-input decode yields exactly what one thread would, in input order, and marks a
    damaged image quarantined (with its reason) without stopping the others."""
    from pathlib import Path

    import numpy as np

    from tasks.build_config import BuildConfig
    from tasks.build_tasks import _decoded_for_teacher
    from tasks.images import load_fitted

    demo = sorted((Path(__file__).resolve().parent.parent / "flows" / "demo_images").glob("*.jpg"))
    good = [p.read_bytes() for p in demo]
    datas = good[:3] + [good[3][:200]] + good[3:]  # a truncated JPEG in the middle
    todo = [(f"img{i}", f"{i:064x}", d) for i, d in enumerate(datas)]
    out = {uri: {"status": "ok", "content_hash": "h"} for uri, _, _ in todo}
    cfg = BuildConfig(height=64, width=192)
    got = list(_decoded_for_teacher(todo, cfg, (42, 126), out))
    assert [uri for uri, _, _ in got] == [uri for uri, _, _ in todo if uri != "img3"]
    for uri, key, image in got:
        i = int(uri[3:])
        assert key == todo[i][1]
        assert np.array_equal(image, load_fitted(datas[i], name=uri, canvas=(64, 192), size=(42, 126)))
    assert out["img3"]["status"] == "quarantined" and "img3" in out["img3"]["reason"]
    assert all(out[u]["status"] == "ok" for u in out if u != "img3")
