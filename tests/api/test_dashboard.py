"""The dashboard's static files: served without a key, and nothing in them comes from the internet."""

import re

import pytest
from fastapi.testclient import TestClient

from services.api.routes.dashboard import STATIC_DIR

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def test_root_leads_to_the_dashboard(client: TestClient) -> None:
    response = TestClient(client.app).get("/", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (307, "/dashboard/")


@pytest.mark.parametrize("page", ["", "inspection.html"])
def test_pages_and_everything_they_load_are_served(client: TestClient, page: str) -> None:
    anonymous = TestClient(client.app)
    html = anonymous.get(f"/dashboard/{page}").text
    assert 'id="login-form"' in html
    assets = re.findall(r'(?:src|href)="([\w.-]+\.(?:js|css))"', html)
    assert "common.js" in assets and "style.css" in assets
    for asset in assets:
        assert anonymous.get(f"/dashboard/{asset}").status_code == 200


def test_no_file_refers_to_the_internet() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://|//[\w-]+\.\w", text), path.name


def test_the_favicon_is_served_so_no_page_load_logs_a_404(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.startswith("<svg")
