-- A legacy database as the old setup left it: everything owned by the superuser, several tables, serial
-- columns, an index, a view and a function. :rows price rows; the watchlist sequence is advanced past its
-- highest id (a deleted row), so a continuing sequence and max(id) + 1 differ.
CREATE TABLE stock_prices (
    id bigserial PRIMARY KEY,
    symbol text NOT NULL CHECK (symbol ~ '^[A-Z0-9.]{1,12}$'),
    day date NOT NULL,
    close numeric(14, 4) NOT NULL CHECK (close >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (symbol, day)
);
CREATE INDEX stock_prices_symbol_idx ON stock_prices (symbol);
CREATE TABLE watchlists (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    symbols text[] NOT NULL DEFAULT '{}',
    notes jsonb
);
CREATE TABLE analysis_runs (
    id serial PRIMARY KEY,
    started_at timestamptz NOT NULL,
    params jsonb NOT NULL,
    score double precision
);
INSERT INTO stock_prices (symbol, day, close, created_at)
SELECT 'S' || (i % 50), date '2000-01-01' + (i / 50), round((i % 997) * 1.37 + 0.0001 * (i % 7), 4),
       timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1, :rows) AS i;
INSERT INTO watchlists (name, symbols, notes)
SELECT 'list-' || i, ARRAY['S' || i, 'S' || (i + 1)], jsonb_build_object('i', i, 'tag', 'ü-' || i)
  FROM generate_series(1, 20) AS i;
DELETE FROM watchlists WHERE id = 20;
INSERT INTO analysis_runs (started_at, params, score)
SELECT timestamptz '2021-06-01 12:00:00+02' + i * interval '1 hour', jsonb_build_object('window', i), i / 3.0
  FROM generate_series(1, 100) AS i;
CREATE VIEW latest_prices AS
SELECT DISTINCT ON (symbol) symbol, day, close FROM stock_prices ORDER BY symbol, day DESC;
CREATE FUNCTION average_close(sym text) RETURNS numeric LANGUAGE sql STABLE AS
$$ SELECT avg(close) FROM stock_prices WHERE symbol = sym $$;
-- A second application schema the legacy app wrote, and a function that runs with its owner's rights.
CREATE SCHEMA analytics;
CREATE TABLE analytics.signals (id bigserial PRIMARY KEY, symbol text NOT NULL, strength real NOT NULL);
INSERT INTO analytics.signals (symbol, strength) SELECT 'S' || i, i / 10.0 FROM generate_series(1, 30) AS i;
CREATE FUNCTION purge_prices() RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ DELETE FROM stock_prices $$;
