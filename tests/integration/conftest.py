"""Real `uvicorn app.main:app` subprocesses on loopback ports, talked to over real HTTP.

The helpers live in tests/support.py (shared with tests/hardening); they are re-exported here so the
integration tests can keep importing them from `conftest`.
"""

from __future__ import annotations

from tests.redis_server import redis_server  # noqa: F401  (re-exported fixture)
from tests.support import (  # noqa: F401  (re-exported; start_server is a fixture)
    REPO_ROOT,
    START_TIMEOUT_S,
    Server,
    copy_bundle,
    free_port,
    launch,
    start_server,
    stop,
    wait_ready,
)
