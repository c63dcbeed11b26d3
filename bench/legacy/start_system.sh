#!/bin/sh
# Legacy start: wait for the database port (the wait-for-it.sh step), then all three servers in one
# container, as start_system.py did.
until python3 -c "import socket; socket.create_connection(('postgres', 5432), 1)" 2>/dev/null; do sleep 1; done
python3 -m stock_app frontend --port 8000 &
python3 -m stock_app admin --port 8001 &
exec python3 -m stock_app api --port 5000
