"""The dashboard in headless Chromium against the real app served by uvicorn on a loopback port."""

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.inference.thread import InferenceThread
from services.ingest.synthetic import render_part
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.inspector import Inspector
from services.vision.overlay import encode_png
from tests.api.conftest import API_KEY
from tests.api.factories import make_alert

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PARTS = 16  # two a bucket, every 4 minutes over the last hour; every third one with a defect


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post_parts(base_url: str) -> None:
    """Send synthetic parts through POST /v1/inspect, as an AOI machine would, and one broken frame."""
    now = datetime.now(UTC)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": API_KEY}, timeout=60) as http:
        for i in range(PARTS):
            kinds = ["sink_mark"] if i % 3 == 0 else []
            image, _, _ = render_part(np.random.default_rng(100 + i), kinds)
            fields = {
                "line_id": "line-1",
                "station_id": "station-1",
                "camera_id": f"cam-{1 + i % 2}",
                "recipe": "housing-A",
                "part_id": f"line-1-{i:06d}",
                "captured_at": (now - timedelta(minutes=4 * ((PARTS - 1 - i) // 2), seconds=10)).isoformat(),
            }
            files = {"image": (f"part-{i}.png", encode_png(image), "image/png")}
            http.post("/v1/inspect", data=fields, files=files).raise_for_status()
        broken = http.post(
            "/v1/inspect", data=fields, files={"image": ("torn.png", b"\x89PNG\r\n", "image/png")}
        )
        assert broken.status_code == 422


@pytest.fixture
def browser_app(tmp_path: Path, tiny_inference: InferenceThread) -> Iterator[FastAPI]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to run the dashboard test")
    with SqliteRecordStore(tmp_path / "records.db") as records:
        records.add_alert(make_alert(line_id="line-1", at=datetime.now(UTC) - timedelta(minutes=3)))
        yield create_app(
            ApiSettings(keys=[API_KEY]), records, TieredBlobStore.at(tmp_path / "blobs"), tiny_inference
        )


def test_dashboard_feed_chart_and_inspection_page(browser_app: FastAPI, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with serving(browser_app) as base_url, sync_playwright() as playwright:
        post_parts(base_url)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base_url}/dashboard/")

        page.fill("#api-key", "wrong-key")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_have_text("This API key is not accepted.")
        page.fill("#api-key", API_KEY)
        page.click("#login-form button")

        rows = page.locator("#feed tbody tr")
        expect(rows).to_have_count(PARTS)
        expect(page.locator("#feed tbody tr.row-ng").first).to_be_visible()
        expect(page.locator("#ng-chart svg polyline")).to_have_count(1)
        expect(page.locator("#ng-chart svg circle")).to_have_count(PARTS // 2)
        expect(page.locator("#status-tiles .tile")).to_have_count(2)
        expect(page.locator("#dead-letters li")).to_contain_text(["undecodable"])
        expect(page.locator("#alerts li")).to_contain_text(["NG rate 8%"])
        for img in page.locator("#feed img.thumb").all():
            expect(img).to_have_attribute("src", re.compile(r"^blob:"))
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        # times of other days carry their date, parameters their unit
        today = page.evaluate("lw.formatTime(new Date().toISOString())")
        two_days_ago = page.evaluate("lw.formatTime(new Date(Date.now() - 2 * 86400e3).toISOString())")
        last_year = page.evaluate("lw.formatTime(new Date(new Date().getFullYear() - 1, 5, 3, 14, 2, 11))")
        assert re.fullmatch(r"\d{2}:\d{2}:\d{2}( [AP]M)?", today), today
        assert len(two_days_ago) > len(today) and not re.fullmatch(r"\d{2}:\d{2}:\d{2}", two_days_ago)
        assert str(datetime.now().year - 1) in last_year, last_year
        labels = page.evaluate(
            "['mould_temp_c', 'injection_speed_mm_s', 'hold_pressure_bar', 'cycle_time_s', 'operator']"
            ".map(lw.paramLabel)"
        )
        assert labels == [
            "mould temp (°C)",
            "injection speed (mm/s)",
            "hold pressure (bar)",
            "cycle time (s)",
            "operator",
        ]

        page.locator("#feed tbody tr.row-ng").first.click()
        expect(page).to_have_url(re.compile(r"/dashboard/inspection\.html\?frame_id="))
        expect(page.locator("#verdict")).to_have_text("NG")
        expect(page.locator("#defects tbody tr").first).to_contain_text("anomaly")
        expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^blob:"))
        expect(page.locator("#timings tbody")).to_contain_text("infer")
        page.screenshot(path=str(tmp_path / "inspection.png"), full_page=True)
        with page.expect_popup() as popup:  # the HTML report, fetched with the key
            page.click("#report")
        report = popup.value
        expect(report.locator("h1")).to_contain_text("Inspection")
        expect(report.locator("h3").first).to_have_text("Defects")
        browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 0


def test_the_api_docs_render_with_no_internet(browser_app: FastAPI) -> None:
    """Swagger UI renders from the API's own assets: every request off the API's host is refused."""
    from playwright.sync_api import Route, expect, sync_playwright

    outside: list[str] = []

    with serving(browser_app) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()

        def only_local(route: Route) -> None:
            if route.request.url.startswith(base_url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        page.goto(f"{base_url}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("linewatch")
        expect(page.locator(".opblock-summary-path").first).to_be_visible()
        browser.close()
    assert outside == []


@pytest.fixture
def analytics_app(tmp_path: Path) -> Iterator[FastAPI]:
    """The API over 5,000 records of the synthetic line (no pixels; no detector needed)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to run the dashboard test")
    from services.ingest.synthetic_records import synthetic_inspections

    with SqliteRecordStore(tmp_path / "records.db") as records:
        records.upsert_inspections(list(synthetic_inspections(5_000, seed=1)))
        yield create_app(ApiSettings(keys=[API_KEY]), records, TieredBlobStore.at(tmp_path / "blobs"))


def test_the_causes_page_charts_the_ranking(analytics_app: FastAPI, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with serving(analytics_app) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base_url}/dashboard/")
        page.fill("#api-key", API_KEY)
        page.click("#login-form button")
        page.click("a.nav")  # "Why NG?"
        expect(page).to_have_url(re.compile(r"/dashboard/causes\.html$"))
        # the planted causes are the red bars, the correlated decoy grey, each with its interval
        expect(page.locator("#causes-chart svg rect.bar")).to_have_count(5)
        expect(page.locator("#causes-chart svg rect.bar.cause")).to_have_count(3)
        expect(page.locator("#causes-chart svg rect.bar.explained")).to_have_count(1)
        expect(page.locator("#causes-chart svg line.whisker")).to_have_count(5)
        expect(page.locator("#causes-table tbody tr").first).to_contain_text("hold pressure (bar)")
        expect(page.locator("#causes-table tbody")).to_contain_text("explained by mould_temp_c")
        expect(page.locator("#bins-chart svg rect.bin")).to_have_count(11)  # 10 edges of the ranking
        expect(page.locator("#causes-summary")).to_contain_text("5000 frames")
        page.screenshot(path=str(tmp_path / "causes.png"), full_page=True)
        # another outcome and a period with no records
        page.select_option("#outcome", "severity=critical")
        page.click("#causes-form button")
        expect(page.locator("#causes-table tbody tr").first).to_contain_text("hold pressure (bar)")
        page.select_option("#period", "3600")
        page.click("#causes-form button")
        expect(page.locator("#causes-chart")).to_contain_text("No parameter separates them.")
        browser.close()


def test_the_review_page_records_a_decision_with_a_drawn_mask(
    tmp_path: Path, tiny_inference: InferenceThread
) -> None:
    """Frames inspected through the API are auto-labelled and queued; a person opens the review
    page, drags a box over the defect, calls it a defect, then calls the next frame good."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to run the dashboard test")
    from playwright.sync_api import expect, sync_playwright

    from services.review.autolabel import decode_png
    from services.review.labeller import label_inspections
    from services.review.queue import ReviewPolicy, ReviewSelector
    from services.storage.label_query import LabelQuery
    from services.storage.sqlite_label_store import SqliteLabelStore

    blobs = TieredBlobStore.at(tmp_path / "blobs")
    with (
        SqliteRecordStore(tmp_path / "records.db") as records,
        SqliteLabelStore(tmp_path / "labels.db") as labels,
    ):
        app = create_app(ApiSettings(keys=[API_KEY]), records, blobs, tiny_inference, labels=labels)
        with serving(app) as base_url, sync_playwright() as playwright:
            post_parts(base_url)
            every_frame = ReviewSelector(ReviewPolicy(near_band=0.5, budget_per_day=5))
            run = label_inspections(
                records.query_inspections(), labels, blobs, every_frame, datetime.now(UTC)
            )
            assert run.queued == 5 and run.over_budget == PARTS - 5
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base_url}/dashboard/")
            page.fill("#api-key", API_KEY)
            page.click("#login-form button")
            page.click("a.nav >> text=Review")
            expect(page).to_have_url(re.compile(r"/dashboard/review\.html$"))
            expect(page.locator("#queue tbody tr")).to_have_count(5)
            expect(page.locator("#queue tbody tr.chosen")).to_have_count(1)
            expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^blob:"))
            first = page.locator("#queue tbody tr.chosen").get_attribute("data-frame-id")
            page.wait_for_function("document.getElementById('overlay').complete")
            area = page.locator("#mask-canvas").bounding_box()
            assert area is not None and area["width"] > 100
            page.mouse.move(area["x"] + 0.25 * area["width"], area["y"] + 0.25 * area["height"])
            page.mouse.down()
            page.mouse.move(area["x"] + 0.5 * area["width"], area["y"] + 0.5 * area["height"], steps=5)
            page.mouse.up()
            page.fill("#reviewer", "m.keller")
            page.fill("#defect-class", "sink mark")
            page.click("#decide-defect")
            expect(page.locator("#decide-result")).to_contain_text(
                "defect with a corrected mask (revision 1)"
            )
            expect(page.locator("#queue tbody tr")).to_have_count(4)
            second = page.locator("#queue tbody tr.chosen").get_attribute("data-frame-id")
            page.click("#decide-good")
            expect(page.locator("#decide-result")).to_contain_text("good (revision 1)")
            expect(page.locator("#history li").first).to_contain_text("queued")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            browser.close()
        assert first is not None and second is not None and first != second
        decided = labels.get_label(first)
        assert decided is not None and decided.review is not None and decided.review.mask is not None
        assert decided.review.reviewer == "m.keller" and decided.review.defect_class == "sink mark"
        mask = decode_png(blobs.get(decided.review.mask.uri)) > 0
        height, width = mask.shape
        assert mask[height * 3 // 8, width * 3 // 8] and not mask[height // 8, width // 8]
        assert 0.04 < mask.mean() < 0.09  # a quarter by a quarter of the frame
        good = labels.get_label(second)
        assert good is not None and good.ground_truth == "good"
        assert labels.count_labels(LabelQuery(status="queued")) == 3
    blobs.close()


def test_the_models_page_draws_the_operating_curve(
    tmp_path: Path, tiny_inference: InferenceThread, tiny_inspector: Inspector
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to run the dashboard test")
    from playwright.sync_api import expect, sync_playwright

    with SqliteRecordStore(tmp_path / "records.db") as records:
        blobs = TieredBlobStore.at(tmp_path / "blobs")
        app = create_app(
            ApiSettings(keys=[API_KEY]), records, blobs, cards={"housing-A": tiny_inspector.card}
        )
        with serving(app) as base_url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base_url}/dashboard/")
            page.fill("#api-key", API_KEY)
            page.click("#login-form button")
            page.click("a.nav >> text=Models")
            expect(page).to_have_url(re.compile(r"/dashboard/models\.html$"))
            model = page.locator("section.model[data-recipe='housing-A']")
            expect(model.locator("h2")).to_contain_text(tiny_inspector.card.version)
            expect(model.locator("svg.curve polyline")).to_have_count(2)
            expect(model.locator("svg.curve line.mark")).to_have_count(
                2
            )  # the REVIEW edge and the NG threshold
            expect(model.locator("table.estimates")).to_contain_text("Misses (defective called OK)")
            page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
            browser.close()
        blobs.close()
