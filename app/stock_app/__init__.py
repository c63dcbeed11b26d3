"""Reference stock-analysis app: API (prices in Postgres), frontend and admin, one WSGI app each."""
