"""Recipe B of E2B-CONTRACT.md: only E2B_DOMAIN, SSL_CERT_FILE and E2B_API_KEY, no URLs. The
SDK then reaches https://api.<domain> and https://49983-<id>.<domain> on the daemon's TLS
listener (a certificate for *.e2b.localhost from firkin's local CA), routed by host name; a
server the sandbox starts is reached at https://<port>-<id>.<domain> as get_host() says."""

import json
import os
import socket
import subprocess
import sys

import pytest

# Runs in its own interpreter so that only recipe B's variables reach the SDK.
CLIENT = r"""
import json, ssl, sys, time, urllib.request
from e2b import Sandbox

meta = json.loads(sys.argv[1])
sbx = Sandbox.create(metadata=meta)
try:
    out = {"id": sbx.sandbox_id, "stdout": sbx.commands.run("echo over tls; whoami").stdout}
    sbx.files.write("tls.txt", "secret")
    out["file"] = sbx.files.read("tls.txt")
    server = sbx.commands.run("cd /tmp && echo page > index.html && python3 -m http.server 8000", background=True)
    host = sbx.get_host(8000)
    out["host"] = host
    context = ssl.create_default_context(cafile=sys.argv[2])
    body = None
    for _ in range(100):
        try:
            with urllib.request.urlopen("https://" + host + "/index.html", context=context, timeout=5) as r:
                body = r.read().decode()
                break
        except Exception as error:
            body = repr(error)
            time.sleep(0.1)
    out["page"] = body
    server.kill()
finally:
    out["killed"] = sbx.kill()
print(json.dumps(out))
"""


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 443)
        return True
    except OSError:
        return False


def test_recipe_b_tls_and_host_names(firkin, meta):
    domain = firkin.env["E2B_DOMAIN"]
    host_part = domain.split(":")[0]
    env = {
        "PATH": os.environ["PATH"],
        "E2B_DOMAIN": domain,
        "SSL_CERT_FILE": firkin.env["SSL_CERT_FILE"],
        "E2B_API_KEY": firkin.env["E2B_API_KEY"],
    }
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(meta), firkin.env["SSL_CERT_FILE"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["stdout"] == "over tls\nuser\n"
    assert out["file"] == "secret"
    assert out["host"] == f"8000-{out['id']}.{domain}"
    assert out["killed"] is True
    if resolves(f"8000-{out['id']}.{host_part}"):
        assert out["page"] == "page\n", out["page"]
    else:
        pytest.skip(
            f"the SDK works over TLS, but this host cannot resolve *.{host_part} for urllib"
            " (install libnss-myhostname); the user server was not fetched"
        )
