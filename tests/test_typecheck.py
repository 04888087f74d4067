"""The core type-checks: ``python -m mypy`` (settings in pyproject.toml's ``[tool.mypy]``) is
clean on proxy/, and the typed keys really are typed (a wrong value under a StateKey or a
ServiceKey is an error the checker reports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MISUSE = '''
from proxy import ServiceKey, StateKey
from proxy.call import Call
from proxy.gateway import Gateway


class Book:
    async def close(self) -> None: ...


async def open_book(gateway: Gateway) -> Book:
    return Book()


COUNT: StateKey[int] = StateKey("count")
BOOK = ServiceKey("book", open_book)


async def use(call: Call, gateway: Gateway) -> None:
    call.state[COUNT] = "three"
    n: int | None = call.state.get(COUNT)
    text: str = call.state[COUNT]
    book: Book = await gateway.services.open(BOOK)
    name: str = await gateway.services.open(BOOK)
'''


def test_mypy_is_clean_on_the_core_and_catches_misused_keys(tmp_path):
    misuse = tmp_path / "misuse.py"
    misuse.write_text(MISUSE)
    run = subprocess.run([sys.executable, "-m", "mypy", "proxy", str(misuse)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    in_core = [e for e in errors if "misuse.py:" not in e]
    assert not in_core, "mypy finds errors in proxy/:\n" + "\n".join(in_core)
    lines = sorted(int(re.match(r".*?:(\d+):", e).group(1)) for e in errors)
    text = MISUSE.splitlines()
    assert [text[n - 1].strip() for n in lines] == [
        'call.state[COUNT] = "three"', "text: str = call.state[COUNT]",
        "name: str = await gateway.services.open(BOOK)"], run.stdout
