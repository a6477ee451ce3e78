"""A fresh database on the machine's PostgreSQL server (127.0.0.1:5432, user ``postgres``, trust auth).

Tests that need one skip, with the reason, when no PostgreSQL answers, unless
``LAYERPRINT_REQUIRE_POSTGRES`` is set (CI sets it): then they fail instead.
"""

import contextlib
import os
import uuid

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"
REQUIRE_ENV = "LAYERPRINT_REQUIRE_POSTGRES"


def _admin_connection():
    import psycopg  # the driver SQLAlchemy 2.1, and so MLflow, uses for postgresql:// URIs

    # autocommit: CREATE/DROP DATABASE cannot run inside a transaction
    return psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", connect_timeout=5, autocommit=True)


def unavailable_reason() -> str | None:
    """Why no test database can be made here, or None when one can."""
    try:
        _admin_connection().close()
    except Exception as error:  # noqa: BLE001 - any failure means: no usable server
        return f"no PostgreSQL at {USER}@{HOST}:{PORT} ({str(error).strip().splitlines()[0]})"
    return None


@contextlib.contextmanager
def fresh_database():
    """Create an empty database, yield its SQLAlchemy URI, drop it (closing what still uses it)."""
    name = f"layerprint_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def required() -> bool:
    return bool(os.environ.get(REQUIRE_ENV))
