"""Closed-loop HTTP load: `concurrency` workers, each sending its next request as soon as the last answered.

One `httpx.AsyncClient` per level (HTTP/1.1 keep-alive, a connection pool sized to the concurrency). The
multipart bodies are encoded once up front, so the client spends its CPU on HTTP, not on re-encoding
uploads; the server parses exactly what a browser or `curl -F` would send.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.stats import summarize_ms


@dataclass(frozen=True)
class Upload:
    """One sample X-ray as a ready-to-send multipart/form-data body."""

    name: str
    body: bytes
    content_type: str

    @classmethod
    def from_file(cls, path: Path, field_name: str = "file") -> Upload:
        data = path.read_bytes()
        boundary = f"bench{uuid.uuid4().hex}"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        return cls(name=path.name, body=body, content_type=f"multipart/form-data; boundary={boundary}")

    @classmethod
    def raw(cls, path: Path, content_type: str = "image/jpeg") -> Upload:
        """The file itself as the body, the form model servers use (POST /predict with Content-Type image/jpeg)."""
        return cls(name=path.name, body=path.read_bytes(), content_type=content_type)


@dataclass
class LevelResult:
    path: str
    concurrency: int
    requests: int
    wall_s: float
    latencies_ok: list[float] = field(default_factory=list)
    latencies_busy: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    busy_503: int = 0  # 503 carrying Retry-After: back-pressure, not an error
    busy_without_retry_after: int = 0  # a 503 without Retry-After counts as an error
    timeouts: int = 0
    transport_errors: int = 0
    server_cpu_s: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ok)

    @property
    def errors(self) -> int:
        """Everything that is neither a 200 nor back-pressure: other statuses, timeouts, broken connections."""
        other = sum(n for status, n in self.statuses.items() if status not in (200, 503))
        return other + self.busy_without_retry_after + self.timeouts + self.transport_errors

    def summary(self) -> dict:
        out = {
            "path": self.path,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "wall_s": round(self.wall_s, 3),
            "throughput_rps": round(self.ok / self.wall_s, 2) if self.wall_s > 0 else None,
            "latency_ok": summarize_ms(self.latencies_ok),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "busy_503_with_retry_after": self.busy_503,
            "errors": self.errors,
            "error_breakdown": {
                "other_status": {str(k): v for k, v in sorted(self.statuses.items()) if k not in (200, 503)},
                "503_without_retry_after": self.busy_without_retry_after,
                "timeouts": self.timeouts,
                "transport_errors": self.transport_errors,
            },
        }
        if self.latencies_busy:
            out["latency_busy_503"] = summarize_ms(self.latencies_busy)
        if self.server_cpu_s is not None:
            out["server_cpu_s"] = round(self.server_cpu_s, 3)
            out["server_cpu_ms_per_ok_request"] = round(1000 * self.server_cpu_s / self.ok, 3) if self.ok else None
        return out


async def run_level(
    base_url: str,
    path: str,
    uploads: list[Upload],
    concurrency: int,
    requests: int,
    *,
    warmup: int = 0,
    timeout_s: float = 60.0,
    cpu_reader=None,
) -> LevelResult:
    """Send `warmup` unmeasured then `requests` measured POSTs with `concurrency` in flight; never raises on HTTP errors."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, http1=True, http2=False, limits=limits, timeout=timeout) as client:
        if warmup:
            await _drive(client, path, uploads, concurrency, warmup, LevelResult(path, concurrency, warmup, 0.0))
        result = LevelResult(path, concurrency, requests, 0.0)
        cpu_before = cpu_reader() if cpu_reader else None
        started = time.perf_counter()
        await _drive(client, path, uploads, concurrency, requests, result)
        result.wall_s = time.perf_counter() - started
        if cpu_reader:
            result.server_cpu_s = cpu_reader() - cpu_before
    return result


async def round_trip(base_url: str, path: str, requests: int, warmup: int = 20) -> dict:
    """p50/p95 of a bodiless GET over one keep-alive connection of the same client: what loopback HTTP, uvicorn
    and httpx add to every request, with no upload and no model. Context for the service/floor ratio."""
    async with httpx.AsyncClient(base_url=base_url, http1=True, http2=False, timeout=httpx.Timeout(30.0)) as client:
        for _ in range(warmup):
            (await client.get(path)).raise_for_status()
        timings = []
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.get(path)
            await response.aread()
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
    return {"path": path, **summarize_ms(timings, (50, 95))}


async def _drive(
    client: httpx.AsyncClient, path: str, uploads: list[Upload], concurrency: int, total: int, result: LevelResult
) -> None:
    counter = iter(range(total))

    async def worker() -> None:
        for index in counter:  # a shared iterator: each request index is taken by exactly one worker
            upload = uploads[index % len(uploads)]
            started = time.perf_counter()
            try:
                response = await client.post(path, content=upload.body, headers={"content-type": upload.content_type})
                await response.aread()
            except httpx.TimeoutException:
                result.timeouts += 1
                continue
            except httpx.TransportError:
                result.transport_errors += 1
                continue
            elapsed = time.perf_counter() - started
            result.statuses[response.status_code] += 1
            if response.status_code == 200:
                result.latencies_ok.append(elapsed)
            elif response.status_code == 503:
                if response.headers.get("retry-after"):
                    result.busy_503 += 1
                    result.latencies_busy.append(elapsed)
                else:
                    result.busy_without_retry_after += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
