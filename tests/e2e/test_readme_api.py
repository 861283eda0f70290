"""The README's HTTP API block, run as written (only ``H`` points at a test worker)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ClusterFactory
from tests.support import http

pytestmark = [pytest.mark.e2e]

README = Path(__file__).resolve().parents[2] / "README.md"

# Every curl reports its status on stderr; the block's own output stays untouched.
PRELUDE = "curl() { command curl -w '%{stderr}HTTP %{http_code} %{method} %{url_effective}\\n' \"$@\"; }\n"


def api_block() -> str:
    text = README.read_text()
    section = text[text.index("## HTTP API") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the README's HTTP API section has no bash block"
    return match.group(1)


def test_every_curl_example_works_as_written(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2)
    block = api_block()
    assert block.startswith("H=http://127.0.0.1:6066\n")
    script = PRELUDE + f"H={cluster.urls[1]}\n" + block.split("\n", 1)[1]
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    calls = [line.split(" ", 3)[1:] for line in run.stderr.splitlines() if line.startswith("HTTP ")]
    assert len(calls) == block.count("curl -s"), run.stderr

    by_path = {(method, url.split("?")[0].removeprefix(cluster.urls[1])): int(code) for code, method, url in calls}
    order_id = next(path.split("/")[2] for _, path in by_path if path.endswith("/ship"))
    for (method, path), code in by_path.items():
        expected = 409 if path.endswith("/cancel") else None  # cancel after delivery, as its comment says
        if expected:
            assert code == expected, (method, path, code)
        else:
            assert 200 <= code < 300, (method, path, code, run.stdout[-2000:])

    order = http("GET", f"{cluster.urls[0]}/orders/{order_id}").body
    assert order["status"] == "delivered"
    assert order["total"] == "25.00"
    stock = http("GET", f"{cluster.urls[0]}/inventory/widget").body
    assert (stock["on_hand"], stock["reserved"], stock["sold"]) == (13, 0, 2)
    assert http("GET", f"{cluster.urls[0]}/users/u2").body["email"] == "ada@example.com"


ADMIN = ("/inventory/widget -", "/restock", "/ship", "/deliver", "/users -", "/users/u2 -", "/dlq")


def test_every_body_is_declared_json_and_every_admin_call_authorised() -> None:
    block = api_block()
    assert "J='Content-Type: application/json'\n" in block
    # One command per entry: a body may continue on the next lines.
    commands = re.split(r"\n(?=\S)", block)
    for command in (c for c in commands if "curl -s" in c):
        for call in command.split("curl -s")[1:]:
            if " -d " in call:
                assert '-H "$J"' in call, f"a body without Content-Type (answered 415): curl -s{call}"
            if any(a in call for a in ADMIN):
                assert '-H "Authorization: Bearer $TOKEN"' in call, f"an admin call without the token: curl -s{call}"
