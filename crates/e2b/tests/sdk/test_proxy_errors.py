"""The sandbox side of bad input, as the SDK and a raw client see it: the proxy answers E2B's
JSON for a wrong envd token, an unknown or killed sandbox and a closed port; malformed bodies
on the sandbox routes of the control plane are 400 and change nothing."""

import json
import os
import urllib.error
import urllib.request

import pytest
from e2b import Sandbox

from test_errors import assert_error, raw


def proxied(sandbox_id: str, path: str, port: int = 49983, token: str | None = None, body=None, headers=None):
    request = urllib.request.Request(
        os.environ["E2B_SANDBOX_URL"] + path, data=body, method="POST" if body is not None else "GET"
    )
    request.add_header("E2b-Sandbox-Id", sandbox_id)
    request.add_header("E2b-Sandbox-Port", str(port))
    if token is not None:
        request.add_header("X-Access-Token", token)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_a_wrong_envd_token_is_refused_with_401(sandbox):
    status, headers, body = proxied(sandbox.sandbox_id, "/process.Process/List", token="wrong", body=b"{}")
    assert status == 401, body
    status, _, body = proxied(sandbox.sandbox_id, "/process.Process/List", body=b"{}")
    assert status == 401, body
    # The SDK, with the real token, is unaffected.
    assert sandbox.commands.run("echo fine").stdout == "fine\n"


def test_unknown_and_killed_sandboxes_are_502_was_not_found(make_sandbox):
    status, headers, body = proxied("nosuchsandbox0000000", "/health")
    error = json.loads(body)
    assert status == 502 and "was not found" in error["message"], (status, error)
    sbx = make_sandbox()
    sandbox_id = sbx.sandbox_id
    assert sbx.kill() is True
    status, _, body = proxied(sandbox_id, "/health")
    assert status == 502 and "was not found" in json.loads(body)["message"]
    with pytest.raises(Exception) as raised:
        sbx.commands.run("echo never")
    assert "not" in str(raised.value).lower() or "timeout" in type(raised.value).__name__.lower()


def test_a_closed_port_is_502_port_not_open(sandbox):
    status, _, body = proxied(sandbox.sandbox_id, "/", port=8765)
    error = json.loads(body)
    assert status == 502 and "port 8765 is not open" in error["message"], (status, error)
    assert sandbox.is_running()


@pytest.mark.parametrize(
    "route,body",
    [
        ("/sandboxes/{id}/timeout", b'{"timeout": "soon"}'),
        ("/sandboxes/{id}/timeout", b"{}"),
        ("/sandboxes/{id}/timeout", b'{"timeout": -5}'),
        ("/sandboxes/{id}/pause", b"{not json"),
        ("/v2/sandboxes/{id}/connect", b'{"timeout": [1]}'),
    ],
)
def test_bad_bodies_on_sandbox_routes_are_400_and_change_nothing(sandbox, route, body):
    before = Sandbox.get_info(sandbox.sandbox_id)
    status, headers, answer = raw("POST", route.format(id=sandbox.sandbox_id), body)
    assert_error(status, headers, answer, 400)
    after = Sandbox.get_info(sandbox.sandbox_id)
    assert (after.state, after.end_at) == (before.state, before.end_at)
    assert sandbox.commands.run("echo same").stdout == "same\n"
