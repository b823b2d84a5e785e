"""Schemathesis against the live service's own OpenAPI schema: no 5xx, responses conform to the schema.

Runs the `schemathesis run` CLI (its pytest plugin does not load under pytest 9) with every check except
`positive_data_acceptance`: the schema can only say that `file` is binary, so schema-valid random bytes are
rightly refused with a documented 415/422 rather than accepted.
Default: 20 examples per operation (examples, coverage and fuzzing phases). `-m slow`: 300 per operation
plus the stateful phase.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = Path(sys.executable).with_name("st")


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server  # session-wide server from tests/hardening/conftest.py


def run_schemathesis(server, tmp_path, *, max_examples: int, phases: str, timeout_s: int) -> None:
    command = [
        str(SCHEMATHESIS), "run", f"{server.base_url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(max_examples), "--phases", phases, "--workers", "2",
        "--request-timeout", "60", "--seed", "1", "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(tmp_path), "--no-color",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    print(output[-6000:])
    assert result.returncode == 0, output[-8000:]
    assert server.process.poll() is None
    log = server.log()
    assert "Traceback" not in log and "unhandled" not in log, log[-3000:]


def test_api_conforms_to_its_schema(server, tmp_path):
    run_schemathesis(
        server,
        tmp_path,
        max_examples=20,
        phases="examples,coverage,fuzzing",
        timeout_s=300,
    )


@pytest.mark.slow
def test_api_conforms_to_its_schema_long(server, tmp_path):
    run_schemathesis(
        server,
        tmp_path,
        max_examples=300,
        phases="examples,coverage,fuzzing,stateful",
        timeout_s=1800,
    )
