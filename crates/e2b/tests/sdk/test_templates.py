"""Sandboxes from a template that is an OCI image, and templates built with the Template
SDK, through the real `e2b` SDK.

The images are made by the tests, from nothing on the internet: a busybox one
(busybox_image.py) that the daemon's own CLI imports (`firkin template import`) or that a
build pulls from the session's registry on loopback, and a Debian one (debian_image.py).
"""

import json
import subprocess

import pytest
from busybox_image import BUSYBOX, IMAGE_ENV, write_layout
from conftest import firkin_binary


@pytest.fixture(scope="module")
def busybox_template(firkin, tmp_path_factory) -> str:
    """The template `busybox-test:v1`, imported into the running daemon's store."""
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing: scripts/setup installs busybox-static")
    layout = tmp_path_factory.mktemp("layout") / "busybox"
    write_layout(layout)
    imported = subprocess.run(
        [
            str(firkin_binary()), "--json", "template", "--state-dir", str(firkin.state_dir),
            "import", str(layout), "--name", "busybox-test:v1",
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    return "busybox-test:v1"


def test_a_sandbox_of_an_image_runs_its_files_as_user_with_its_env(
    busybox_template, make_sandbox
):
    sbx = make_sandbox(template=busybox_template)
    assert sbx.commands.run("cat /etc/os-release").stdout == "ID=firkin-busybox-test\n"
    assert sbx.files.read("/usr/share/greeting.txt") == "a file of the image\n"
    # E2B's user, made by the template's system layer, is the default user, in its home.
    assert sbx.commands.run("whoami").stdout.strip() == "user"
    assert sbx.commands.run("pwd").stdout.strip() == "/home/user"
    assert sbx.commands.run("id -u").stdout.strip() == "1000"
    assert sbx.commands.run("whoami", user="root").stdout.strip() == "root"
    # The image's ENV reaches every command.
    assert sbx.commands.run("echo $GREETING").stdout.strip() == IMAGE_ENV
    # The sandbox's own identity files, not the image's.
    assert sbx.commands.run("hostname").stdout.strip() == sbx.sandbox_id
    assert "127.0.1.1" in sbx.files.read("/etc/hosts")
    assert sbx.files.read("/etc/resolv.conf").startswith("# firkin")
    # Writes land in the sandbox's own upper layer.
    sbx.files.write("/home/user/note.txt", "mine")
    assert sbx.commands.run("cat /home/user/note.txt").stdout == "mine"
    sbx.commands.run("rm /usr/share/greeting.txt", user="root")
    assert not sbx.files.exists("/usr/share/greeting.txt")


def test_sandboxes_of_one_image_do_not_see_each_others_writes(busybox_template, make_sandbox):
    first = make_sandbox(template=busybox_template)
    second = make_sandbox(template=busybox_template, envs={"FROM_CREATE": "yes"})
    first.commands.run("rm /usr/share/greeting.txt", user="root")
    first.files.write("/srv/only-first.txt", "1", user="root")
    assert second.files.read("/usr/share/greeting.txt") == "a file of the image\n"
    assert not second.files.exists("/srv/only-first.txt")
    assert second.commands.run("echo $FROM_CREATE $GREETING").stdout.strip() == (
        f"yes {IMAGE_ENV}"
    )


def test_an_unknown_template_or_tag_is_a_404_with_e2bs_words(busybox_template, meta):
    from e2b import Sandbox, SandboxException

    with pytest.raises(SandboxException) as error:
        Sandbox.create(template="no-such-template", metadata=meta)
    assert "template 'no-such-template' not found" in str(error.value)
    with pytest.raises(SandboxException) as error:
        Sandbox.create(template="busybox-test:v2", metadata=meta)
    assert "tag 'v2' does not exist for template 'busybox-test'" in str(error.value)
    # Building `busybox-test:v1` made no `default` tag (as in E2B).
    with pytest.raises(SandboxException) as error:
        Sandbox.create(template="busybox-test", metadata=meta)
    assert "tag 'default' does not exist" in str(error.value)


def test_the_template_sdk_builds_on_a_template_and_its_sandboxes_run_the_result(
    busybox_template, make_sandbox, run_id, tmp_path
):
    from e2b import Template

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("built by firkin\n")
    (tmp_path / "notes.txt").write_text("copied\n")
    template = (
        Template(file_context_path=str(tmp_path))
        .from_template(busybox_template)
        .copy("notes.txt", "notes.txt")
        .copy("site", "/srv/www/", mode=0o755)
        .set_envs({"BUILD_ONLY": "yes"})
        .run_cmd('echo "$BUILD_ONLY" > env-at-build && whoami > built-by')
        .run_cmd("mkdir -p /opt/tool && echo tool > /opt/tool/version", user="root")
        .set_workdir("/srv/www")
        .set_start_cmd(
            "httpd -f -p 8080 -h /srv/www",
            "wget -q -O /dev/null http://127.0.0.1:8080/index.html",
        )
    )
    name = f"built-{run_id}"
    logs = []
    Template.build(template, f"{name}:v1", on_build_logs=logs.append)
    assert any("RUN mkdir -p /opt/tool" in entry.message for entry in logs), logs

    sbx = make_sandbox(template=f"{name}:v1")
    # COPY: a relative destination lands in the user's home; a directory is merged in.
    assert sbx.files.read("/home/user/notes.txt") == "copied\n"
    assert sbx.commands.run("stat -c '%U %a' /srv/www/index.html").stdout.strip() == "user 755"
    # RUN steps ran as the build's user (user) or as asked (root), with the build's ENV.
    assert sbx.files.read("/home/user/built-by") == "user\n"
    assert sbx.files.read("/home/user/env-at-build") == "yes\n"
    assert sbx.files.read("/opt/tool/version") == "tool\n"
    # The final WORKDIR is the sandboxes' working directory; ENV was the build's alone.
    assert sbx.commands.run("pwd").stdout.strip() == "/srv/www"
    assert sbx.commands.run("echo \"[$BUILD_ONLY]\"").stdout.strip() == "[]"
    # The start command runs, and was ready before the create answered.
    served = sbx.commands.run("wget -q -O - http://127.0.0.1:8080/index.html")
    assert served.stdout == "built by firkin\n"

    # An unchanged rebuild runs no step again: each step that made a layer (ENV makes none,
    # nor WORKDIR of a directory that exists) is taken from the cache.
    again = []
    Template.build(template, f"{name}:v2", on_build_logs=again.append)
    cached = [entry.message for entry in again if entry.message.startswith("CACHED")]
    assert cached == [
        "CACHED COPY notes.txt notes.txt",
        "CACHED COPY site /srv/www/",
        'CACHED RUN echo "$BUILD_ONLY" > env-at-build && whoami > built-by',
        "CACHED RUN mkdir -p /opt/tool && echo tool > /opt/tool/version (as root)",
    ], [entry.message for entry in again]
    assert Template.exists(name)
    assert not Template.exists(f"nothing-{run_id}")


def test_a_failing_step_fails_the_build_with_its_command_and_status(busybox_template, run_id):
    from e2b import BuildException, Template

    template = Template().from_template(busybox_template).run_cmd("echo about to fail; exit 3")
    lines = []
    with pytest.raises(BuildException) as error:
        Template.build(template, f"failing-{run_id}", on_build_logs=lines.append)
    assert "failed to run command 'echo about to fail; exit 3': exit status 3" in str(error.value)
    assert any(entry.message == "about to fail" for entry in lines), lines
    from e2b import Sandbox, SandboxException

    with pytest.raises(SandboxException) as missing:
        Sandbox.create(template=f"failing-{run_id}")
    assert "does not exist" in str(missing.value), "a failed build takes no tag"


def test_a_build_from_an_image_in_a_registry_gets_the_system_layer(
    registry, make_sandbox, run_id, tmp_path
):
    from e2b import Template

    layout = tmp_path / "layout"
    write_layout(layout)
    reference = registry.push_layout(layout, "firkin-test/busybox", "1")
    template = Template().from_image(reference).run_cmd("echo from-image > mark")
    Template.build(template, f"from-image-{run_id}")
    sbx = make_sandbox(template=f"from-image-{run_id}")
    assert sbx.files.read("/home/user/mark") == "from-image\n"
    assert sbx.commands.run("whoami").stdout.strip() == "user"
    assert sbx.commands.run("echo $GREETING").stdout.strip() == IMAGE_ENV


@pytest.fixture(scope="module")
def debian(registry) -> str:
    """The Debian image (python3, pip, node) in the session's registry."""
    from debian_image import debian_layout

    return registry.push_layout(debian_layout(), "firkin-test/debian", "bookworm")


def test_a_debian_template_built_with_pip_and_a_server_runs_its_packages(
    debian, make_sandbox, run_id, tmp_path
):
    from e2b import Template

    (tmp_path / "app.py").write_text("import six\nprint('app', six.PY3)\n")
    template = (
        Template(file_context_path=str(tmp_path))
        .from_image(debian)
        .pip_install("six")
        .copy("app.py", "/app/")
        .set_workdir("/app")
        .set_start_cmd(
            "python3 -m http.server 8000",
            "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000')\"",
        )
    )
    lines = []
    Template.build(template, f"debian-py-{run_id}", on_build_logs=lines.append)
    sbx = make_sandbox(template=f"debian-py-{run_id}")
    assert sbx.commands.run("python3 /app/app.py").stdout == "app True\n"
    assert sbx.commands.run("node -e 'console.log(6 * 7)'").stdout == "42\n"
    assert sbx.commands.run("whoami").stdout.strip() == "user"
    listing = sbx.commands.run("python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000').status)\"")
    assert listing.stdout.strip() == "200"


def test_a_template_is_handed_out_warm_after_its_first_create(busybox_template, make_sandbox):
    import time

    from test_daemon_metrics import scrape

    claims = 'firkin_sandbox_create_phase_seconds_count{phase="claim"}'
    make_sandbox(template=busybox_template)
    deadline = time.monotonic() + 20
    while scrape()["firkin_template_warm_sandboxes_ready"] < 1:
        assert time.monotonic() < deadline, "the template's warm pool did not fill"
        time.sleep(0.05)
    claimed_before = scrape().get(claims, 0)
    sbx = make_sandbox(template=busybox_template, envs={"FROM_CREATE": "warm"})
    assert scrape()[claims] == claimed_before + 1, "the create handed out a warm sandbox"
    # Made ahead under a pool name, it now answers to its own id, with its own environment.
    assert sbx.commands.run("hostname").stdout.strip() == sbx.sandbox_id
    assert sbx.sandbox_id in sbx.files.read("/etc/hosts")
    assert sbx.commands.run("echo $FROM_CREATE $GREETING").stdout.strip() == f"warm {IMAGE_ENV}"
    assert sbx.commands.run("whoami").stdout.strip() == "user"


def test_firkin_template_build_builds_a_dockerfile(registry, firkin, make_sandbox, run_id, tmp_path):
    import os

    layout = tmp_path / "layout"
    write_layout(layout)
    reference = registry.push_layout(layout, "firkin-test/busybox", "1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello from the context\n")
    (context / "Dockerfile").write_text(
        f"FROM {reference}\n"
        "WORKDIR /app\n"
        "ENV X=1\n"
        "COPY hello.txt ./\n"
        "RUN echo \"built with X=$X\" > /app/built\n"
        "EXPOSE 8080\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/app"]\n'
    )
    built = subprocess.run(
        [
            str(firkin_binary()), "--json", "template", "build", "-f", str(context / "Dockerfile"),
            str(context), "--name", f"dockerfile-{run_id}", "--url", os.environ["E2B_API_URL"],
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "FIRKIN_API_KEY": firkin.env["E2B_API_KEY"]},
    )
    assert built.returncode == 0, built.stderr
    assert "EXPOSE has no meaning here" in built.stderr
    assert json.loads(built.stdout.splitlines()[-1])["name"] == f"dockerfile-{run_id}"
    sbx = make_sandbox(template=f"dockerfile-{run_id}")
    # COPY as root (the Dockerfile's steps start as root), a RUN that saw its ENV, the user
    # `user` at the end (the Dockerfile set none), in its WORKDIR, and its CMD serving.
    assert sbx.files.read("/app/hello.txt") == "hello from the context\n"
    assert sbx.files.read("/app/built") == "built with X=1\n"
    assert sbx.commands.run("whoami").stdout.strip() == "user"
    assert sbx.commands.run("pwd").stdout.strip() == "/app"
    # (A Dockerfile's CMD has no ready command: the server may still be starting.)
    served = sbx.commands.run(
        "i=0; while [ $i -lt 100 ]; do wget -q -O - http://127.0.0.1:8080/hello.txt && exit 0;"
        " i=$((i+1)); sleep 0.05; done; exit 1"
    )
    assert served.stdout == "hello from the context\n"


def test_tags_and_a_delete_refused_while_a_sandbox_uses_the_template(
    firkin, make_sandbox, run_id, tmp_path
):
    import os
    import urllib.error
    import urllib.request

    from e2b import Sandbox, SandboxException, Template

    layout = tmp_path / "layout"
    write_layout(layout)
    name = f"in-use-{run_id}"
    imported = subprocess.run(
        [
            str(firkin_binary()), "--json", "template", "--state-dir", str(firkin.state_dir),
            "import", str(layout), "--name", f"{name}:v1",
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert imported.returncode == 0, imported.stderr

    # Tags: assigned to the build v1 names, listed, used by a create, removed.
    Template.assign_tags(f"{name}:v1", ["prod"])
    assert sorted(tag.tag for tag in Template.get_tags(name)) == ["prod", "v1"]
    sbx = make_sandbox(template=f"{name}:prod")

    def delete() -> int:
        request = urllib.request.Request(
            f"{os.environ['E2B_API_URL']}/templates/{name}",
            method="DELETE",
            headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            assert error.code != 400 or "in use by sandbox" in error.read().decode()
            return error.code

    assert delete() == 400, "a running sandbox uses it"
    # The command line, beside the running daemon, has the daemon check and remove.
    removed = subprocess.run(
        [
            str(firkin_binary()), "template", "--state-dir", str(firkin.state_dir), "rm", name,
            "--url", os.environ["E2B_API_URL"],
        ],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FIRKIN_API_KEY": firkin.env["E2B_API_KEY"]},
    )
    assert removed.returncode != 0 and "in use by sandbox" in removed.stderr, removed.stderr
    Template.remove_tags(name, "prod")
    with pytest.raises(SandboxException):
        Sandbox.create(template=f"{name}:prod", metadata={"test": run_id})

    sbx.kill()
    assert delete() == 204
    assert delete() == 404
    assert not Template.exists(name)


# Recipe B (TLS and host names) in its own interpreter, as test_tls_recipe.py runs it.
TLS_BUILD = r"""
import pathlib, sys, tempfile
from e2b import Template

context = pathlib.Path(tempfile.mkdtemp())
(context / "over-tls.txt").write_text("uploaded over tls\n")
template = Template(file_context_path=str(context)).from_template(sys.argv[1]).copy(
    "over-tls.txt", "over-tls.txt"
)
Template.build(template, sys.argv[2])
print("built")
"""


def test_a_build_over_the_tls_listener_uploads_its_files_over_tls(
    busybox_template, firkin, make_sandbox, run_id
):
    import os
    import sys

    name = f"over-tls-{run_id}"
    env = {
        "PATH": os.environ["PATH"],
        "E2B_DOMAIN": firkin.env["E2B_DOMAIN"],
        "SSL_CERT_FILE": firkin.env["SSL_CERT_FILE"],
        "E2B_API_KEY": firkin.env["E2B_API_KEY"],
    }
    built = subprocess.run(
        [sys.executable, "-c", TLS_BUILD, busybox_template, name],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert built.returncode == 0 and built.stdout.strip() == "built", built.stderr[-3000:]
    sbx = make_sandbox(template=name)
    assert sbx.files.read("/home/user/over-tls.txt") == "uploaded over tls\n"


def test_the_template_sdk_builds_on_base_and_its_writes_under_usr_stay_in_the_template(
    make_sandbox, run_id, tmp_path
):
    import pathlib

    from e2b import Template

    (tmp_path / "notes.txt").write_text("on base\n")
    marker = f"/usr/local/share/firkin-test-{run_id}"
    template = (
        Template(file_context_path=str(tmp_path))
        .from_template("base")
        .copy("notes.txt", "notes.txt")
        .run_cmd("echo built > built.txt && whoami > by.txt")
        .run_cmd(f"mkdir -p {marker} && echo usr-layer > {marker}/x", user="root")
    )
    name = f"on-base-{run_id}"
    Template.build(template, name)
    sbx = make_sandbox(template=name)
    assert sbx.files.read("/home/user/notes.txt") == "on base\n"
    assert sbx.files.read("/home/user/built.txt") == "built\n"
    assert sbx.files.read("/home/user/by.txt") == "user\n"
    # What a step wrote under /usr is the template's, stacked into the sandbox's /usr over
    # the host's (still idmapped: sudo works, python3 runs).
    assert sbx.files.read(f"{marker}/x") == "usr-layer\n"
    assert sbx.commands.run("sudo -n whoami").stdout.strip() == "root"
    assert sbx.commands.run("python3 -c 'print(6 * 7)'").stdout == "42\n"
    # ...and neither the host's nor a base sandbox's.
    assert not pathlib.Path(marker).exists()
    assert not make_sandbox().files.exists(f"{marker}/x")
