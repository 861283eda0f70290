"""Container health check: the worker's web server answers GET /health on this container."""

import os
import sys
import urllib.request

bind = os.environ.get("ORDERSTREAM_WEB_BIND") or os.environ.get("ORDERSTREAM_WEB_HOST", "127.0.0.1")
host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
port = os.environ.get("ORDERSTREAM_WEB_PORT", "6066")
try:
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
