"""Logging set-up; called once, from a ``__main__``."""

from __future__ import annotations

import logging.config


def setup_logging(level: str = "INFO", *, name: str = "stratus") -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {
                    "format": f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
                }
            },
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
            },
            "root": {"level": level, "handlers": ["stderr"]},
            "loggers": {"nats": {"level": "WARNING"}, "aiosqlite": {"level": "WARNING"}},
        }
    )
