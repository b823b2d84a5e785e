"""`pneumonia serve` / `python -m app.serve`: run the service with uvicorn. Research use only.

The service's own settings come from `PNEUMONIA_*` variables (app/config.py); this command only says where
to listen. Without API keys the service refuses a non-loopback address unless PNEUMONIA_ALLOW_ANONYMOUS=true
(docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumonia serve", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("UVICORN_HOST", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1: this machine only)")  # fmt: skip
    parser.add_argument("--port", type=int, default=int(os.environ.get("UVICORN_PORT", "8000")))
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads the model)")
    args = parser.parse_args(argv)
    import uvicorn

    os.environ["UVICORN_HOST"] = args.host  # what the service's start-up rule reads (app/bind.py)
    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers,
                timeout_graceful_shutdown=20, access_log=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
