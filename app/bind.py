"""Where the service listens, and the start-up rule for a service without API keys.

With no keys configured (`PNEUMONIA_API_KEYS_FILE` unset) the service serves anonymous callers on loopback
only, unless `PNEUMONIA_ALLOW_ANONYMOUS=true` says otherwise on purpose. Two checks enforce it:

1. At start-up, before the model loads (`check_anonymous_exposure`): the address uvicorn is about to bind is
   read the way uvicorn reads it (its own command-line parser over `sys.argv`, with `UVICORN_HOST` and the
   rest of its environment variables), since uvicorn runs the lifespan before it binds. A non-loopback host
   (`0.0.0.0`, `::`, a LAN address, a name that resolves to one) stops start-up with one log line
   (`refusing to start: no API keys are configured and the service would listen on 0.0.0.0 ...`).
2. On every request that would be answered anonymously (`anonymous_refused`): the address of the socket the
   connection arrived on (ASGI `scope["server"]`). This covers what the first cannot see: another server
   (gunicorn's `--bind`), `--fd`, or an embedding program; there start-up only warns, and a connection that
   did not arrive on a loopback address is refused with 403 `anonymous_not_allowed`.
A Unix domain socket (`--uds`) counts as local.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from dataclasses import dataclass

log = logging.getLogger("app.bind")

UVICORN_DEFAULT_HOST = "127.0.0.1"


class StartupRefusedError(RuntimeError):
    """The service would answer anonymous callers beyond this machine."""


@dataclass(frozen=True)
class Bind:
    """What the server will listen on: a host, a Unix socket, or unknown (not started by uvicorn's CLI)."""

    host: str | None = None
    uds: str | None = None
    how: str = "unknown"  # how it was found, for the log line

    @property
    def local(self) -> bool | None:
        """True: loopback or a Unix socket; False: reachable from elsewhere; None: unknown."""
        if self.uds:
            return True
        if self.host is None:
            return None
        return is_loopback_host(self.host)


def is_loopback_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """A literal loopback address, or a name whose every address is loopback (`localhost`)."""
    if is_ip(host):
        return is_loopback_ip(host)
    if not host:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(is_loopback_ip(str(a)) for a in addresses)


def _started_by_uvicorn_cli(argv: list[str]) -> bool:
    program = os.path.basename(argv[0]) if argv else ""
    return program == "uvicorn" or argv[0].replace(os.sep, "/").endswith("uvicorn/__main__.py")


def uvicorn_bind(argv: list[str] | None = None) -> Bind:
    """The host/uds/fd uvicorn's CLI will use, parsed by uvicorn's own parser; `Bind()` when not its CLI.

    `uvicorn --workers N` and `--reload` start their workers with the parent's argv (multiprocessing's spawn
    restores it), so the workers see the same answer.
    """
    argv = list(sys.argv if argv is None else argv)
    if not _started_by_uvicorn_cli(argv):
        return Bind()
    import click
    import uvicorn.main  # noqa: F401  (the module; `uvicorn.main` the attribute is the click command)

    command = sys.modules["uvicorn.main"].main
    try:
        # resilient parsing: no callbacks (--version), no errors, no defaults; environment variables apply
        context = command.make_context("uvicorn", argv[1:], resilient_parsing=True)
    except click.ClickException:
        return Bind()
    params = context.params
    if params.get("fd") is not None:
        return Bind(how="uvicorn --fd")
    if params.get("uds"):
        return Bind(uds=params["uds"], how="uvicorn --uds")
    return Bind(host=params.get("host") or UVICORN_DEFAULT_HOST, how="uvicorn's --host, UVICORN_HOST or default")


def check_anonymous_exposure(*, has_keys: bool, allow_anonymous: bool, bind: Bind | None = None) -> None:
    """The start-up rule; raises `StartupRefusedError` when it is broken (the lifespan logs it and stops)."""
    if has_keys:
        return
    bind = bind or uvicorn_bind()
    where = bind.uds or bind.host or "an address uvicorn's command line does not give"
    if allow_anonymous:
        if bind.local is not True:
            log.warning("no API keys: serving anyone who can reach %s, because PNEUMONIA_ALLOW_ANONYMOUS=true", where)
        return
    if bind.local is True:
        log.info("no API keys (PNEUMONIA_API_KEYS_FILE unset): anonymous callers on %s (loopback) only", where)
        return
    if bind.local is None:
        log.warning(
            "no API keys and the listening address is unknown (%s): anonymous requests are answered only on "
            "loopback connections; set PNEUMONIA_API_KEYS_FILE to serve others",
            bind.how,
        )
        return
    message = (
        f"no API keys are configured and the service would listen on {where} ({bind.how}), "
        "which is not loopback, so anyone who can reach it could use it. Set PNEUMONIA_API_KEYS_FILE (see "
        "docs/security.md; `python -m app.keys new KEY_ID`), listen on 127.0.0.1, or set "
        "PNEUMONIA_ALLOW_ANONYMOUS=true to serve without keys on purpose"
    )
    raise StartupRefusedError(message)


def anonymous_refused(server: tuple[str, int] | list | None) -> bool:
    """True when an anonymous request arrived on a non-loopback socket address (the request-time backstop).

    ASGI test transports name a host instead of an address (`testserver`): only addresses are judged.
    """
    if not server:
        return False  # a Unix socket
    host = str(server[0])
    return is_ip(host) and not is_loopback_ip(host)
