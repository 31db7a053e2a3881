"""Elasticsearch away or refusing writes mid-run: back pressure and retries, nothing lost, nothing
twice. The server (osmem-server, or LINEWATCH_TEST_ES_URL) sits behind a TCP proxy the test cuts;
osmem keeps its data in memory, so the outage is made by cutting the network rather than by
stopping the process."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from services.ingest.synthetic_records import synthetic_inspections
from services.steps.store import store_group
from services.storage.elasticsearch_record_store import ElasticsearchRecordStore
from services.storage.errors import RecordStoreUnavailable
from services.storage.file_blob_store import FileBlobStore
from services.stream.runtime import Line, LineOptions
from tests.elasticsearch_server import CuttableProxy, store_url
from tests.stream.fakes import FakeDetector, ListSource, captured


def _through(proxy: CuttableProxy, server: str, **options: str) -> tuple[str, str]:
    """The URL of a fresh prefix through the proxy, and the same prefix straight to the server."""
    prefix = f"lwt-{uuid.uuid4().hex[:10]}"
    return store_url(f"http://127.0.0.1:{proxy.port}", prefix, refresh="true", **options), store_url(
        server, prefix, refresh="true"
    )


def test_a_write_waits_out_an_outage_and_stores_each_record_once(
    es_proxy: CuttableProxy, es_server_url: str
) -> None:
    via_proxy, direct = _through(es_proxy, es_server_url, retry_s="30")
    records = list(synthetic_inspections(300, seed=9))
    with ElasticsearchRecordStore(via_proxy) as store, ElasticsearchRecordStore(direct) as check:
        store.upsert_inspections(records[:100])
        es_proxy.cut()
        done = threading.Event()

        def write() -> None:
            store.upsert_inspections(records[100:])
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(1.5)
        assert not done.is_set()  # back pressure: the write blocks while the server is away
        es_proxy.mend()
        writer.join(30)
        assert done.is_set()
        check.refresh_now()
        assert check.count_inspections() == 300
        store.upsert_inspections(records[50:150])  # a replay after recovery: still one each
        assert check.count_inspections() == 300


def test_past_its_retry_window_a_write_raises_and_the_same_records_go_again(
    es_proxy: CuttableProxy, es_server_url: str
) -> None:
    via_proxy, direct = _through(es_proxy, es_server_url, retry_s="0.5", timeout_s="2")
    records = list(synthetic_inspections(50, seed=10))
    with ElasticsearchRecordStore(via_proxy) as store, ElasticsearchRecordStore(direct) as check:
        store.upsert_inspections(records[:10])
        es_proxy.cut()
        results = store_group(store, _NoBlobs(), records[10:])
        assert all(isinstance(error, RecordStoreUnavailable) for error, _ in results)  # none to blame
        es_proxy.mend()
        assert all(error is None for error, _ in store_group(store, _NoBlobs(), records[10:]))
        assert check.count_inspections() == 50


def test_items_refused_by_a_write_block_are_retried_until_it_lifts(es_server_url: str) -> None:
    """A full disk makes Elasticsearch block writes (a 403 per bulk item): the store retries them."""
    url = store_url(es_server_url, f"lwt-{uuid.uuid4().hex[:10]}", refresh="true", retry_s="30")
    records = list(synthetic_inspections(40, seed=11))  # all captured on one day: one index
    with ElasticsearchRecordStore(url) as store:
        store.upsert_inspections(records[:20])
        index = f"{store.prefix}-inspections-{records[0].captured_at:%Y.%m.%d}"
        store._es.indices.put_settings(index=index, settings={"index.blocks.write": True})
        writer = threading.Thread(target=store.upsert_inspections, args=(records[20:],))
        writer.start()
        time.sleep(1.0)
        assert store.count_inspections() == 20  # refused so far
        store._es.indices.put_settings(index=index, settings={"index.blocks.write": False})
        writer.join(30)
        assert not writer.is_alive()
        assert store.count_inspections() == 40


def test_the_embedded_line_holds_its_records_while_elasticsearch_is_away(
    es_proxy: CuttableProxy, es_server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    via_proxy, direct = _through(es_proxy, es_server_url, retry_s="0.3", timeout_s="2")
    detector = FakeDetector().install(monkeypatch)
    monkeypatch.setattr("services.stream.runtime.STORE_UNAVAILABLE_WAIT_S", 0.2)
    frames = [captured(i) for i in range(60)]
    with ElasticsearchRecordStore(via_proxy) as store, ElasticsearchRecordStore(direct) as check:
        line = Line([ListSource(frames)], [], detector, store, FileBlobStore(tmp_path / "blobs"),
                    LineOptions(max_batch=4))  # fmt: skip

        async def scenario() -> None:
            task = asyncio.create_task(line.run())
            while check.count_inspections() < 8:
                await asyncio.sleep(0.05)
            es_proxy.cut()
            await asyncio.sleep(2.0)
            stored_while_away = check.count_inspections()
            assert stored_while_away < 60
            es_proxy.mend()
            await task

        asyncio.run(scenario())
        summary = line.summary
        assert (summary.inspected, summary.frame_dead_letters, summary.stopped_by) == (60, 0, None)
        assert check.count_inspections() == 60
        assert check.count_dead_letters() == 0
        assert {r.frame_id for r in check.query_inspections()} == {f.frame_id for f in frames}


class _NoBlobs(FileBlobStore):
    def __init__(self) -> None:
        pass

    def sync(self) -> None:
        pass
