"""The daemon's API key never reaches code in a sandbox: a server inside the sandbox that
echoes the headers it got, reached through the proxy with the key sent both ways the control
plane accepts it, sees neither; what the sandbox needs (a user's own Authorization) passes."""

import json
import os
import time

from test_proxy_errors import proxied

ECHO_SERVER = """
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps([[k.lower(), v] for k, v in self.headers.items()]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8123), Echo).serve_forever()
"""


def echoed(sandbox_id: str, headers: dict) -> list:
    """The headers the in-sandbox server saw, once it is up (it starts in the background)."""
    deadline = time.monotonic() + 30
    while True:
        status, _, body = proxied(sandbox_id, "/", port=8123, headers=headers)
        if status == 200:
            return json.loads(body)
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.2)


def test_the_api_key_is_not_forwarded_into_the_sandbox(sandbox):
    sandbox.files.write("/tmp/echo.py", ECHO_SERVER)
    sandbox.commands.run("python3 /tmp/echo.py", background=True)
    key = os.environ["E2B_API_KEY"]

    seen = echoed(sandbox.sandbox_id, {"X-API-KEY": key, "Authorization": f"Bearer {key}"})
    names = [name for name, _ in seen]
    assert "x-api-key" not in names and "authorization" not in names, seen
    assert all(key not in value for _, value in seen), seen

    own = echoed(sandbox.sandbox_id, {"Authorization": "Bearer my-own-token"})
    assert ["authorization", "Bearer my-own-token"] in own, own
