"""The guard of tests/sdk_clients.py, run by a real pytest on a test file of its own: a test that
leaves an openai or anthropic SDK client open fails, naming where the client was made; clients
closed by ``async with``, ``with`` or ``close_at_end`` pass."""

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CASES = '''
import anthropic
import openai


async def test_leaves_one_open(close_at_end):
    close_at_end(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
    anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="k")


def test_leaves_a_sync_one_open():
    openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k").with_options(max_retries=0)


async def test_async_with():
    async with openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        client.with_options(max_retries=0)


def test_with():
    with anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="k"):
        pass


async def test_close_at_end(close_at_end):
    client = close_at_end(openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
    close_at_end(anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="k"))
    close_at_end(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
    assert not client.is_closed()
'''


def test_a_test_that_leaves_an_sdk_client_open_fails_and_says_where_it_was_made(tmp_path):
    (tmp_path / "conftest.py").write_text("from sdk_clients import *  # noqa: F403\n")
    (tmp_path / "test_cases.py").write_text(CASES)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist",
               "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "test_cases.py"]
    run = subprocess.run(command, cwd=tmp_path, env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert "5 passed, 2 errors" in out, out  # (errors at teardown: the tests' bodies passed)
    said = dict(re.findall(r"_ ERROR at teardown of (\w+) _+\n(.*)\n", out))
    left_open = "SDK clients left open (close them: `async with`, or the close_at_end fixture), made at "
    assert said == {"test_leaves_one_open": left_open + "test_cases.py:8",
                    # the client and its with_options copy (which shares its connections)
                    "test_leaves_a_sync_one_open": left_open + "test_cases.py:12, test_cases.py:12"}, out
