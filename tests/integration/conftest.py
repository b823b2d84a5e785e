"""Real `uvicorn app.main:app` subprocesses on loopback ports, talked to over real HTTP.

The helpers live in tests/support.py (shared with tests/hardening): import them as `from tests.support import
...`. This conftest only makes its fixtures available to the integration tests.
"""

from __future__ import annotations

from tests.redis_server import redis_server  # noqa: F401  (fixture)
from tests.support import start_server  # noqa: F401  (fixture)
