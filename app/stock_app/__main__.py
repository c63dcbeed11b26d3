"""`python -m stock_app {api,frontend,admin} --port N`: serve one of the apps with waitress."""

from __future__ import annotations

import argparse
import json
import os
import urllib.request

from stock_app.config import DbConfig, read_secret
from stock_app.store import PostgresStore
from stock_app.web import WsgiApp, admin_app, api_app, frontend_app


def build(role: str) -> WsgiApp:
    if role == "api":
        return api_app(PostgresStore(DbConfig.from_env()))
    if role == "admin":
        return admin_app(PostgresStore(DbConfig.from_env()), os.environ.get("ADMIN_USER", "admin"),
                         lambda: read_secret("ADMIN_PASSWORD"))
    api_url = os.environ.get("API_URL", "http://api:5000").rstrip("/")

    def fetch() -> list[dict[str, str]]:
        with urllib.request.urlopen(f"{api_url}/prices?limit=50", timeout=3) as resp:  # noqa: S310 (fixed scheme)
            data: list[dict[str, str]] = json.load(resp)
            return data

    return frontend_app(fetch)


def main() -> None:
    parser = argparse.ArgumentParser(prog="stock_app")
    parser.add_argument("role", choices=("api", "frontend", "admin"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0", help="inside the container; Docker decides the host side")
    args = parser.parse_args()
    import waitress

    waitress.serve(build(args.role), host=args.host, port=args.port, threads=8, ident="stock-app")


if __name__ == "__main__":
    main()
