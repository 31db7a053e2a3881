"""API keys: 401 without one, 403 with a wrong one, hashed keys from settings or the environment."""

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.api.app import create_app
from services.api.auth import key_matches
from services.api.settings import ApiSettings, hash_key
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.conftest import API_KEY

PROTECTED = ["/v1/inspections", "/v1/ng-rate", "/v1/status", "/v1/dead-letters", "/v1/alerts", "/metrics"]


@pytest.fixture
def anonymous(client: TestClient) -> TestClient:
    return TestClient(client.app)


@pytest.mark.parametrize("path", PROTECTED)
def test_no_key_is_401_with_a_clear_reason(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path)
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PROTECTED)
def test_wrong_key_is_403(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path, headers={"X-API-Key": "not-the-key"})
    assert response.status_code == 403
    assert response.json() == {"detail": "API key not accepted"}


def test_right_key_in_either_header_is_accepted(anonymous: TestClient) -> None:
    assert anonymous.get("/v1/inspections", headers={"X-API-Key": API_KEY}).status_code == 200
    assert anonymous.get("/v1/inspections", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_other_authorization_schemes_count_as_no_key(anonymous: TestClient) -> None:
    response = anonymous.get("/v1/inspections", headers={"Authorization": f"Basic {API_KEY}"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready", "/docs", "/openapi.json", "/dashboard/"])
def test_health_docs_and_dashboard_page_are_public(anonymous: TestClient, path: str) -> None:
    assert anonymous.get(path).status_code == 200


def test_a_configured_hash_accepts_its_key_but_not_the_hash_itself(
    records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    digest = hash_key("line-2-aoi")
    client = TestClient(create_app(ApiSettings(key_hashes=[digest.upper()]), records, blobs))
    assert client.get("/v1/alerts", headers={"X-API-Key": "line-2-aoi"}).status_code == 200
    assert client.get("/v1/alerts", headers={"X-API-Key": digest}).status_code == 403


def test_plain_keys_from_the_environment_are_kept_only_as_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_API_KEYS", "alpha-key, beta-key")
    monkeypatch.setenv("LINEWATCH_API_KEY_HASHES", hash_key("gamma-key"))
    settings = ApiSettings()
    assert settings.key_hashes == [hash_key("gamma-key"), hash_key("alpha-key"), hash_key("beta-key")]
    assert settings.keys == []
    assert "alpha-key" not in repr(settings) + settings.model_dump_json()


def test_a_malformed_hash_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        ApiSettings(key_hashes=["my-plain-secret"])
    assert "SHA-256" in str(caught.value)
    assert "my-plain-secret" not in str(caught.value)


def test_keys_may_be_switched_off_for_a_closed_network(
    records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    client = TestClient(create_app(ApiSettings(auth_required=False), records, blobs))
    assert client.get("/v1/inspections").status_code == 200


def test_the_app_refuses_to_start_without_keys_when_they_are_required(
    records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    with pytest.raises(ValueError, match="LINEWATCH_API_KEYS"):
        create_app(ApiSettings(), records, blobs)


def test_key_matches_compares_hashes() -> None:
    hashes = [hash_key("a"), hash_key("b")]
    assert key_matches("b", hashes)
    assert not key_matches("c", hashes)
    assert not key_matches("a", [])


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_their_assets_from_the_api_itself(anonymous: TestClient, path: str) -> None:
    page = anonymous.get(path).text
    assert "cdn." not in page and "https://" not in page.split("<body")[1]
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/redoc.standalone.js"):
        if asset.rsplit("/", 1)[1] in page:
            response = anonymous.get(asset)
            assert response.status_code == 200 and len(response.content) > 100_000
