#!/usr/bin/env python3
"""``make run``: a broker, a worker and demo stock, then the dashboard URL; Ctrl-C stops it all.

Kafka comes from ``docker/compose.yml`` when a Docker engine answers, otherwise
from the local KRaft broker (``scripts/kafka_local.py``). An already reachable
broker named by ``ORDERSTREAM_BROKER`` is used as is.

The broker's data (``.data/kafka``) and the worker's tables (``.data/worker1``) live and
die together: both are kept between runs, so a second ``make run`` shows the first
run's orders; ``make clean`` removes both. (A worker whose tables were written against
another cluster or changelog discards them on start: see ``app.engine.recovery``.)

Quiet by default: a few lines, then the URL, the demo data and how to stop. The
worker's log goes to ``<data dir>/worker1.log``; ``-v`` (or ``VERBOSE=1``) shows it
on the terminal instead.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import kafka_local  # noqa: E402

DEMO_PRODUCTS = {"widget": 100, "gadget": 50, "gizmo": 25, "doohickey": 10, "sprocket": 200}


def _say(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def _request(method: str, url: str, body: object | None = None, token: str = "") -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _untouched(url: str) -> bool:
    """Whether the product at ``url`` has never had stock (so demo stock may be set)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            stock = json.loads(resp.read())
    except (OSError, ValueError):
        return True
    return not any(stock.get(k) for k in ("on_hand", "reserved", "sold"))


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where = f"; the end of {log}:\n{_tail(log)}" if log else "; see its log above"
            raise SystemExit(f"the worker exited with code {proc.returncode}{where}")
        if _request("GET", url + "/ready") == 200:
            return
        time.sleep(0.5)
    raise SystemExit(f"the worker did not become ready within {timeout:.0f}s; its log: {log or 'above'}")


def _compose_env() -> dict[str, str]:
    """Compose requires ORDERSTREAM_ADMIN_TOKEN for the workers; only Kafka is started here."""
    env = dict(os.environ)
    env.setdefault("ORDERSTREAM_ADMIN_TOKEN", secrets.token_hex(16))
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")), help="Kafka port")
    parser.add_argument("--web-port", type=int, default=int(os.environ.get("WEB_PORT", "6066")))
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    parser.add_argument("--no-demo", action="store_true", help="do not load demo stock")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=os.environ.get("VERBOSE", "") not in ("", "0"),
        help="show the worker's log on the terminal (default: a file under the data directory)",
    )
    args = parser.parse_args(argv)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    cluster: kafka_local.Cluster | None = None
    compose = False
    broker = os.environ.get("ORDERSTREAM_BROKER", "")
    worker: subprocess.Popen[bytes] | None = None
    try:
        if broker:
            _say(f"using the broker at {broker}")
        elif kafka_local.docker_available():
            _say("Docker answers: starting Kafka with docker/compose.yml")
            subprocess.run(
                ["docker", "compose", "-f", str(ROOT / "docker/compose.yml"), "up", "-d", "kafka"],
                check=True,
                env=_compose_env(),
            )
            compose = True
            broker = "kafka://127.0.0.1:9092"
            kafka_local.wait_until_ready([("127.0.0.1", 9092)], expected_brokers=1, timeout=90)
        else:
            _say(f"no Docker engine: starting the local KRaft broker (Apache Kafka {kafka_local.KAFKA_VERSION})")
            cluster = kafka_local.start(
                port=args.port, nodes=1, data_dir=args.data_dir / "kafka", owner_pid=os.getpid(), keep=True
            )
            broker = f"kafka://{cluster.bootstrap}"
        env = {**os.environ, "ORDERSTREAM_BROKER": broker}
        cmd = [sys.executable, "-m", "faust", "--datadir", str(args.data_dir / "worker1"), "-A", "app", "worker"]
        cmd += ["-l", "info", "--web-port", str(args.web_port)]
        log_path: Path | None = None
        if args.verbose:
            _say("starting a worker: " + " ".join(cmd[2:]))
            worker = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        else:
            args.data_dir.mkdir(parents=True, exist_ok=True)
            log_path = args.data_dir / "worker1.log"
            _say(f"starting a worker (log: {log_path}; -v or VERBOSE=1 shows it here)")
            with open(log_path, "ab") as log_file:
                worker = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT
                )
        url = f"http://127.0.0.1:{args.web_port}"
        _wait_ready(url, worker, log_path)
        demo = ""
        if not args.no_demo:
            token = os.environ.get("ORDERSTREAM_ADMIN_TOKEN", "")
            for product, on_hand in DEMO_PRODUCTS.items():
                if _untouched(f"{url}/inventory/{product}"):  # a kept run's stock stays as it was
                    _request("PUT", f"{url}/inventory/{product}", {"on_hand": on_hand}, token)
            demo = ", ".join(f"{p} {n}" for p, n in DEMO_PRODUCTS.items())
        print(f"\n  orderstream is running. Open {url}/  (Ctrl-C to stop)", flush=True)
        if demo:
            print(f"  demo stock: {demo}", flush=True)
            print(
                f"  place an order: curl -s -X POST {url}/orders -H 'Content-Type: application/json' -d "
                """'{"user_id":"u1","user_email":"u1@example.com","items":[{"product_id":"widget","quantity":1,"""
                """"price":"9.99"}],"payment":{"method":"card","card_number":"4242424242424242","expiry":"12/34","""
                """"cvv":"123"}}'""",
                flush=True,
            )
        print("  Ctrl-C stops the worker and the broker.\n", flush=True)
        while not stopping and worker.poll() is None:
            time.sleep(0.2)
        return 0 if stopping else (worker.returncode or 1)
    except kafka_local.KafkaLocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if worker is not None and worker.poll() is None:
            _say("stopping the worker")
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if cluster is not None:
            _say("stopping the broker")
            cluster.stop()
        if compose:
            subprocess.run(
                ["docker", "compose", "-f", str(ROOT / "docker/compose.yml"), "down"], check=False, env=_compose_env()
            )


if __name__ == "__main__":
    raise SystemExit(main())
