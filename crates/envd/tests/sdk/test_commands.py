"""Commands through the SDK: the first, smallest checks; more live beside it."""


def test_echo_round_trip(sandbox):
    result = sandbox.commands.run("echo hi; echo err >&2")
    assert result.stdout == "hi\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 0
