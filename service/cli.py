"""The ``bncheck`` console script: serve | check | vectors."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus bncheck's one-JSON-line-per-request access log on stdout."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["bncheck"] = {"format": "%(message)s"}
    config["handlers"]["bncheck"] = {"class": "logging.StreamHandler", "formatter": "bncheck",
                                     "stream": "ext://sys.stdout"}
    config["loggers"]["bncheck"] = {"handlers": ["bncheck"], "level": level.upper(), "propagate": False}
    return config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import Settings, create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    # uvicorn finishes in-flight requests on SIGTERM, waiting up to one check's time budget.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=_log_config(settings.log_level), access_log=False,
                timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bncheck", description="Check batch-norm backward passes.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (settings from BNCHECK_* variables)")
    serve.add_argument("--host", help="address to listen on (BNCHECK_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (BNCHECK_PORT, default 8000)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
