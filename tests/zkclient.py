"""A plain kazoo client on the lab's ZooKeeper, for tests that look at znodes directly
(independently of the code under test)."""
import contextlib

from kazoo.client import KazooClient


@contextlib.contextmanager
def kazoo_client(connect, timeout=10):
    client = KazooClient(hosts=connect, timeout=timeout)
    client.start(timeout=timeout)
    try:
        yield client
    finally:
        client.stop()
        client.close()
