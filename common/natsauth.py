"""How Stratus processes authenticate to NATS, and how URLs are shown without their secrets.

Each process connects with at most one of: a credentials file (``--creds``: a JWT and an nkey
seed, as made by ``nsc``) or an nkey seed file (``--nkey-seed``: as written by
``stratus nats-config``), plus, for TLS, the CA file that signed the server's certificate
(``--tls-ca``). The files are read by nats-py; their contents are never logged.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError


def auth_options(creds: str = "", nkey_seed: str = "", tls_ca: str = "") -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (empty without credentials or a CA)."""
    if creds and nkey_seed:
        raise ConfigError("give either a credentials file or an nkey seed file, not both")
    options: dict[str, Any] = {}
    if creds:
        options["user_credentials"] = creds
    if nkey_seed:
        options["nkeys_seed"] = nkey_seed
    if tls_ca:
        try:
            options["tls"] = ssl.create_default_context(cafile=tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS CA file {tls_ca}: {exc}") from exc
    return options


def host_inbox_prefix(host_id: str) -> str:
    """A host agent's reply inboxes live under ``_INBOX_<host>``: its permissions allow only its
    own inboxes, so no agent can read another's replies."""
    return f"_INBOX_{host_id}"


def redact_url(url: str) -> str:
    """``nats://user:secret@host:4222`` -> ``nats://***@host:4222`` (comma lists too)."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    parts = urlsplit(url.strip())
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def nats_servers(url: str) -> list[str]:
    """``nats_url`` as nats-py takes it: a comma-separated list of servers (any server of a
    NATS cluster) becomes a list; nats-py rejects the comma-separated string itself."""
    return [part.strip() for part in url.split(",") if part.strip()]
