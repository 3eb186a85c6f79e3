"""``python -m scheduler`` / ``stratus scheduler``: wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvloop

from common.config import SchedulerConfig, load_config, nats_environment
from common.errors import StratusError
from common.logging import setup_logging
from scheduler.shell.ha import HaScheduler

log = logging.getLogger("scheduler")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stratus scheduler", description="Run the scheduler.")
    parser.add_argument(
        "--nats",
        dest="nats_url",
        help="NATS URL (default: $STRATUS_NATS, else the config's, else nats://127.0.0.1:4222)",
    )
    parser.add_argument("--config", help="TOML config file (see deploy/scheduler.toml)")
    parser.add_argument("--creds", dest="nats_creds", metavar="FILE", help="NATS credentials file")
    parser.add_argument(
        "--nkey-seed", dest="nats_nkey_seed", metavar="FILE", help="NATS nkey seed file"
    )
    parser.add_argument("--tls-ca", dest="nats_tls_ca", metavar="FILE", help="NATS TLS CA file")
    parser.add_argument("--db", dest="db_path", help="SQLite store path")
    parser.add_argument("--heartbeat-interval", dest="heartbeat_interval_s", type=float)
    parser.add_argument("--fence-after", dest="fence_after_s", type=float)
    parser.add_argument("--dead-after", dest="dead_after_s", type=float)
    parser.add_argument("--scorer", choices=["binpack", "spread"])
    parser.add_argument(
        "--http",
        dest="http_listen",
        metavar="HOST:PORT",
        help="serve the HTTP API and portal here, e.g. 127.0.0.1:8080 (default: off); the "
        "bearer token comes from the config's api_token or STRATUS_API_TOKEN",
    )
    parser.add_argument(
        "--lease", dest="lease_s", type=float, help="leader lease seconds (default 3)"
    )
    parser.add_argument(
        "--replicas", type=int, help="replicas of every stream and bucket, 1..5 (default 1)"
    )
    parser.add_argument("--drain-parallelism", dest="drain_parallelism", type=int)
    parser.add_argument(
        "--migration-max-per-host",
        dest="migration_max_per_host",
        type=int,
        help="live migrations touching one host at once (default 2)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


CANCEL_AGAIN_S = 0.2
CANCEL_AT_MOST = 100


def cancel_until_done(run: asyncio.Future[None], left: int = CANCEL_AT_MOST) -> None:
    """Cancel ``run``, and again every ``CANCEL_AGAIN_S`` while it goes on (at most ``left``
    times): a cancellation that lands inside nats-py's connect can be lost there (the connect
    error raised while it unwinds replaces it, and the connect retries)."""
    if run.done() or left <= 0:
        return
    run.cancel()
    asyncio.get_running_loop().call_later(CANCEL_AGAIN_S, cancel_until_done, run, left - 1)


async def _serve(app: HaScheduler) -> None:
    """Run until SIGTERM or SIGINT. A signal stops a serving scheduler in order (drain, close);
    one that is still connecting (NATS or JetStream unreachable) has nothing to drain, so its
    start-up is cancelled and the store closed at once."""
    loop = asyncio.get_running_loop()
    run = asyncio.ensure_future(app.run())

    def on_signal() -> None:
        app.stop()
        if not app.connected.is_set():
            log.info("stopping before start-up finished")
            cancel_until_done(run)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await run
    except asyncio.CancelledError:
        if not run.cancelled():
            raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {**nats_environment(), **{k: v for k, v in vars(args).items() if v is not None}}
    overrides = {k: v for k, v in overrides.items() if k not in ("config", "log_level")}
    overrides["api_token"] = os.environ.get("STRATUS_API_TOKEN")  # never a flag: ps shows flags
    try:
        config = load_config(SchedulerConfig, args.config, overrides)
    except StratusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, name="scheduler")
    try:
        uvloop.run(_serve(HaScheduler(config)))
    except StratusError as exc:
        log.error("scheduler failed error=%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
