"""Errors of `firkin serve` as the real `e2b` SDK and a raw HTTP client see them: every error
is E2B's JSON `{"code": int, "message": str}` with the matching status, the SDK raises its
documented exception for it, and the daemon keeps serving afterwards."""

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    NotFoundException,
    Sandbox,
    SandboxNotFoundException,
    SandboxQuery,
)

UNKNOWN_ID = "nosuchsandbox0000000"


def raw(method: str, path: str, body: bytes | None = None, api_key: str | None = "env", headers=None):
    """(status, headers, body bytes) of one request to the daemon, by stdlib urllib."""
    url = os.environ["E2B_API_URL"] + path
    request = urllib.request.Request(url, data=body, method=method)
    if api_key == "env":
        api_key = os.environ["E2B_API_KEY"]
    if api_key is not None:
        request.add_header("X-API-KEY", api_key)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def assert_error(status: int, headers, body: bytes, expected: int) -> dict:
    """The response is `expected` with an E2B error JSON whose code is the status."""
    assert status == expected, f"status {status}, body {body[:300]!r}"
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    error = json.loads(body)
    assert isinstance(error.get("code"), int) and not isinstance(error["code"], bool), error
    assert isinstance(error.get("message"), str) and error["message"], error
    assert error["code"] == expected, error
    return error


def assert_still_serving(make_sandbox) -> None:
    sbx = make_sandbox()
    assert sbx.commands.run("echo ok").stdout == "ok\n"
    assert sbx.kill() is True


# -- through the SDK ------------------------------------------------------------------------


def test_wrong_api_key_is_an_authentication_error(meta):
    with pytest.raises(AuthenticationException):
        Sandbox.create(metadata=meta, api_key="e2b_wrong")
    with pytest.raises(AuthenticationException):
        Sandbox.list(query=SandboxQuery(metadata=meta), api_key="e2b_wrong").next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.get_info(UNKNOWN_ID, api_key="e2b_wrong")


def test_wrong_api_key_does_not_touch_a_sandbox(sandbox):
    with pytest.raises(AuthenticationException):
        Sandbox.kill(sandbox.sandbox_id, api_key="e2b_wrong")
    assert sandbox.is_running()
    assert sandbox.get_info().sandbox_id == sandbox.sandbox_id


def test_unknown_sandbox_is_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(UNKNOWN_ID)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(UNKNOWN_ID)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout(UNKNOWN_ID, 30)
    assert Sandbox.kill(UNKNOWN_ID) is False


def test_async_unknown_sandbox_and_wrong_key():
    async def main():
        with pytest.raises(SandboxNotFoundException):
            await AsyncSandbox.connect(UNKNOWN_ID)
        with pytest.raises(NotFoundException):
            await AsyncSandbox.get_info(UNKNOWN_ID)
        assert await AsyncSandbox.kill(UNKNOWN_ID) is False
        with pytest.raises(AuthenticationException):
            await AsyncSandbox.create(api_key="e2b_wrong")

    asyncio.run(main())


# -- raw HTTP -------------------------------------------------------------------------------


def test_raw_missing_and_wrong_api_key():
    assert_error(*raw("GET", "/v2/sandboxes", api_key=None), 401)
    assert_error(*raw("GET", "/v2/sandboxes", api_key="e2b_wrong"), 401)
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID":"base"}', api_key="x"), 401)


def test_raw_malformed_json_is_400(make_sandbox):
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID": "base",'), 400)
    assert_error(*raw("POST", "/v2/sandboxes", b"not json at all"), 400)
    assert_still_serving(make_sandbox)


def test_raw_wrong_type_is_400(make_sandbox):
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID": 5}'), 400)
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID": "base", "timeout": "soon"}'), 400)
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID": "base", "metadata": [1]}'), 400)
    assert_error(*raw("POST", "/v2/sandboxes", b"[]"), 400)
    assert_still_serving(make_sandbox)


def test_raw_missing_template_is_400(make_sandbox):
    assert_error(*raw("POST", "/v2/sandboxes", b"{}"), 400)
    assert_error(*raw("POST", "/v2/sandboxes", b'{"templateID": ""}'), 400)
    assert_still_serving(make_sandbox)


def test_raw_two_mib_body_is_413(make_sandbox, meta):
    # Valid JSON that would create a sandbox, were it not 2 MiB.
    body = json.dumps(
        {"templateID": "base", "metadata": {**meta, "pad": "x" * (2 << 20)}}
    ).encode()
    assert_error(*raw("POST", "/v2/sandboxes", body), 413)
    assert_still_serving(make_sandbox)


def test_raw_unknown_route_is_404(make_sandbox):
    assert_error(*raw("GET", "/no/such/route"), 404)
    assert_error(*raw("POST", "/v9/sandboxes", b"{}"), 404)
    assert_still_serving(make_sandbox)


def test_raw_unknown_sandbox_is_404():
    for method, path, body in [
        ("GET", f"/sandboxes/{UNKNOWN_ID}", None),
        ("DELETE", f"/sandboxes/{UNKNOWN_ID}", None),
        ("POST", f"/sandboxes/{UNKNOWN_ID}/timeout", b'{"timeout": 10}'),
        ("POST", f"/sandboxes/{UNKNOWN_ID}/pause", b"{}"),
        ("POST", f"/v2/sandboxes/{UNKNOWN_ID}/connect", b'{"timeout": 10}'),
    ]:
        status, headers, data = raw(method, path, body)
        assert_error(status, headers, data, 404)


def test_raw_bad_list_query_is_400():
    assert_error(*raw("GET", "/v2/sandboxes?state=dead"), 400)
    assert_error(*raw("GET", "/v2/sandboxes?limit=0"), 400)
    assert_error(*raw("GET", "/v2/sandboxes?limit=many"), 400)


def test_raw_create_answers_201_with_the_sandbox(meta):
    body = json.dumps({"templateID": "base", "timeout": 30, "metadata": meta}).encode()
    status, headers, data = raw("POST", "/v2/sandboxes", body)
    assert status == 201, data
    sandbox = json.loads(data)
    try:
        assert sandbox["templateID"] == "base"
        assert isinstance(sandbox["sandboxID"], str) and sandbox["sandboxID"]
        assert isinstance(sandbox["clientID"], str)
        assert isinstance(sandbox["envdVersion"], str)
    finally:
        status, _, _ = raw("DELETE", f"/sandboxes/{sandbox['sandboxID']}")
    assert status == 204
    assert_error(*raw("DELETE", f"/sandboxes/{sandbox['sandboxID']}"), 404)


def test_raw_status_codes_of_the_sandbox_routes(meta):
    """The statuses the SDK branches on (E2B-CONTRACT.md §4), as a raw client sees them."""
    body = json.dumps({"templateID": "base", "timeout": 60, "metadata": meta}).encode()
    status, _, data = raw("POST", "/v2/sandboxes", body)
    assert status == 201, data
    sandbox_id = json.loads(data)["sandboxID"]
    try:
        status, _, data = raw("GET", f"/sandboxes/{sandbox_id}")
        assert status == 200, data
        detail = json.loads(data)
        for key in ("templateID", "sandboxID", "clientID", "startedAt", "endAt", "envdVersion"):
            assert isinstance(detail[key], str), (key, detail)
        for key in ("cpuCount", "memoryMB", "diskSizeMB"):
            assert isinstance(detail[key], int), (key, detail)
        assert detail["state"] == "running"

        status, _, data = raw("POST", f"/sandboxes/{sandbox_id}/timeout", b'{"timeout": 90}')
        assert (status, data) == (204, b"")
        # Connect to a running sandbox: 200; to a paused one: 201 (resumed).
        status, _, data = raw("POST", f"/v2/sandboxes/{sandbox_id}/connect", b'{"timeout": 90}')
        assert status == 200, data
        assert json.loads(data)["sandboxID"] == sandbox_id
        status, _, data = raw("POST", f"/sandboxes/{sandbox_id}/pause", b"{}")
        assert (status, data) == (204, b"")
        assert_error(*raw("POST", f"/sandboxes/{sandbox_id}/pause", b"{}"), 409)
        status, _, data = raw("GET", f"/sandboxes/{sandbox_id}")
        assert json.loads(data)["state"] == "paused"
        status, _, data = raw("POST", f"/v2/sandboxes/{sandbox_id}/connect", b'{"timeout": 90}')
        assert status == 201, data
        status, _, data = raw("GET", f"/sandboxes/{sandbox_id}")
        assert json.loads(data)["state"] == "running"
        assert_error(*raw("POST", f"/sandboxes/{sandbox_id}/timeout", b'{"timeout": "x"}'), 400)
    finally:
        status, _, data = raw("DELETE", f"/sandboxes/{sandbox_id}")
    assert (status, data) == (204, b"")
    assert_error(*raw("DELETE", f"/sandboxes/{sandbox_id}"), 404)
    assert_error(*raw("GET", f"/sandboxes/{sandbox_id}"), 404)


def test_raw_list_pages_with_x_next_token(make_sandbox, meta):
    ids = [make_sandbox().sandbox_id for _ in range(3)]
    quoted = urllib.parse.quote(urllib.parse.urlencode(meta))
    status, headers, data = raw("GET", f"/v2/sandboxes?metadata={quoted}&limit=2&order=asc")
    assert status == 200, data
    first = [s["sandboxID"] for s in json.loads(data)]
    token = headers.get("x-next-token")
    assert first == ids[:2] and token
    path = f"/v2/sandboxes?metadata={quoted}&limit=2&order=asc&nextToken={urllib.parse.quote(token)}"
    status, headers, data = raw("GET", path)
    assert [s["sandboxID"] for s in json.loads(data)] == ids[2:]
    assert not headers.get("x-next-token")
