"""One SQL statement on a fresh autocommit connection, for tests that check a database
directly (rows left, rows planted)."""
import psycopg2


def query(dsn, statement, params=None):
    """Rows for a query, the row count for anything else."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else cur.rowcount
    finally:
        conn.close()
