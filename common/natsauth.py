"""How Stratus processes authenticate to NATS, and how URLs are shown without their secrets.

Each process connects with at most one of: a credentials file (``--creds``: a JWT and an nkey
seed, as made by ``nsc``) or an nkey seed file (``--nkey-seed``: as written by
``stratus nats-config``), plus, for TLS, the CA file that signed the server's certificate
(``--tls-ca``). The files are read by nats-py; their contents are never logged.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nkeys

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


def key_inbox_prefix(public_key: str) -> str:
    """The reply inboxes of a client that connects with the nkey ``public_key``: ``stratus
    nats-config`` lets each role's key subscribe only to its own, so no role reads another's
    replies (nor the scheduler's job fetches). Never ``_INBOX_<host>``: a public key has no
    ``_`` after ``_INBOX``."""
    return f"_INBOX.{public_key}"


def inbox_prefix(nkey_seed: str = "") -> str | None:
    """The ``inbox_prefix`` for ``nats.connect`` of a client with this nkey seed file (None:
    nats-py's default ``_INBOX``, for connections without an nkey, or with a credentials file
    whose permissions its issuer wrote). Raises ConfigError for an unreadable seed."""
    if not nkey_seed:
        return None
    try:
        seed = Path(nkey_seed).read_bytes().strip()
        key = nkeys.from_seed(bytearray(seed))
    except (OSError, ValueError, nkeys.NkeysError) as exc:
        raise ConfigError(f"cannot read the nkey seed file {nkey_seed}") from exc
    try:
        return key_inbox_prefix(key.public_key.decode())
    finally:
        key.wipe()


def inbox_options(nkey_seed: str = "") -> dict[str, str]:
    """``{"inbox_prefix": ...}`` for ``nats.connect`` when the seed calls for one, else ``{}``."""
    prefix = inbox_prefix(nkey_seed)
    return {} if prefix is None else {"inbox_prefix": prefix}


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
