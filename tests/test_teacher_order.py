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
    """The threaded shard decode gives exactly what one thread would: every good photo at the canvas, the
    teacher's input (the canvas resampled) only for the inputs still to infer, in input order; a damaged image
    is marked quarantined (with its reason) without stopping the others."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import numpy as np

    from tasks.build_config import BuildConfig
    from tasks.build_tasks import _decode_shard
    from tasks.images import load_fitted, resize_image

    demo = sorted((Path(__file__).resolve().parent.parent / "flows" / "demo_images").glob("*.jpg"))
    good = [p.read_bytes() for p in demo]
    datas = good[:3] + [good[3][:200]] + good[3:]  # a truncated JPEG in the middle
    inputs = {f"img{i}": d for i, d in enumerate(datas)}
    rows = {uri: [i] for i, uri in enumerate(inputs)}
    rows["img0"].append(len(inputs))  # an input listed twice fills both rows
    todo = {uri: f"{i:064x}" for i, uri in enumerate(inputs) if i != 1}  # img1's output is cached
    out = {uri: {"status": "ok", "content_hash": "h"} for uri in inputs}
    cfg = BuildConfig(height=64, width=192)
    rgb = np.zeros((len(inputs) + 1, 64, 192, 3), np.uint8)
    with ThreadPoolExecutor(3) as pool:
        net_inputs = _decode_shard(inputs, rows, todo, cfg, (42, 126), out, pool, rgb)
    for uri, data in inputs.items():
        for i in rows[uri]:
            want = np.zeros_like(rgb[0]) if uri == "img3" else load_fitted(data, name=uri, canvas=(64, 192))
            assert np.array_equal(rgb[i], want)
    assert [uri for uri, _, _ in net_inputs] == [uri for uri in todo if uri != "img3"]
    for uri, key, image in net_inputs:
        assert key == todo[uri] and image.shape == (42, 126, 3)
        assert np.array_equal(image, resize_image(rgb[rows[uri][0]], (42, 126)))
    assert out["img3"]["status"] == "quarantined" and "img3" in out["img3"]["reason"]
    assert all(out[u]["status"] == "ok" for u in out if u != "img3")
