"""The fleet tests' own redis-server (``tests/fleet.py: private_redis``) never hands a test
someone else's Redis: a free port taken before redis-server binds it is retried on another,
and a port that stays taken fails the test loudly instead of running it against a stranger."""

import socket
import subprocess

import pytest
import redis
from fleet import free_port, private_redis


def _listener(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_taken_free_port_is_retried_on_another(tmp_path, monkeypatch):
    taken = free_port()
    squatter = _listener(taken)  # answers connections, as another test's server would
    ports = iter([taken])
    monkeypatch.setattr("fleet.free_port", lambda: next(ports, None) or free_port())
    try:
        with private_redis(tmp_path) as proc:
            assert proc.port != taken
            assert redis.Redis(port=proc.port).ping() is True
    finally:
        squatter.close()


def test_a_given_port_that_is_taken_fails_loudly(tmp_path):
    squatter = _listener(free_port())
    port = squatter.getsockname()[1]
    try:
        with pytest.raises(pytest.fail.Exception, match="redis-server did not start"), \
                private_redis(tmp_path, port=port):
            pass
    finally:
        squatter.close()
    assert not [p for p in subprocess.run(["pgrep", "-f", f"redis-server.*:{port}"], capture_output=True,
                                          text=True).stdout.split()]
