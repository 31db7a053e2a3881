"""API keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, checked against SHA-256 hashes.

No key is 401, a key that matches none of the configured hashes is 403. The hash of the presented
key is compared with every configured hash in constant time.
"""

import hmac
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.api.context import Context
from services.api.settings import hash_key

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")
bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


def key_matches(key: str, key_hashes: list[str]) -> bool:
    """Whether ``key`` hashes to one of ``key_hashes``; looks at every hash, whatever matches."""
    digest = hash_key(key)
    matched = False
    for expected in key_hashes:
        matched |= hmac.compare_digest(digest, expected)
    return matched


def require_api_key(
    context: Context,
    api_key: Annotated[str | None, Security(api_key_header)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    if not context.settings.auth_required:
        return
    key = (api_key or (credentials.credentials if credentials else "")).strip()
    if not key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(key, context.settings.key_hashes):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API key not accepted")
