"""Make ``docs/plugin-hooks.md`` from the code, so the hooks reference cannot go stale.

    python -m proxy.hookdoc            # write the page
    python -m proxy.hookdoc --check    # exit 1 (and say so) when the page differs

The page is the docstrings of ``proxy/hookspecs.py`` (the contract and every
hook, in the order they are defined) and the public face of ``proxy/__init__.py``
(its names and ``PUBLIC_MODULES``). ``tests/test_hook_docs.py`` fails while the
committed page differs from what this module makes.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import proxy

from . import hookspecs

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugin-hooks.md"
COMMAND = "python -m proxy.hookdoc"


def hookspec_functions() -> list[Callable]:
    """Every hook of the contract, in the order ``hookspecs.py`` defines them."""
    return [fn for name, fn in vars(hookspecs).items() if name.startswith("tollway_") and callable(fn)]


def is_request_time(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn)


def signature(fn: Callable) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{'async ' if is_request_time(fn) else ''}def {fn.__name__}({params}) -> {sig.return_annotation}"


def summary(obj: object) -> str:
    """The first sentence-line of an object's docstring (its own, not its class's)."""
    doc = obj.__doc__ if (inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj)) else None
    if not doc:
        raise ValueError(f"{getattr(obj, '__qualname__', obj)!r} has no docstring: the hooks page needs one")
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")


def cell(text: str) -> str:
    """Text for a Markdown table cell (a ``|`` would end it)."""
    return text.replace("|", "\\|")


def render() -> str:
    out = [
        "# Plugin hooks",
        "",
        f"<!-- Made by `{COMMAND}` from the docstrings in proxy/hookspecs.py and proxy/__init__.py. "
        "Edit those and run it again; tests/test_hook_docs.py fails while this page differs. -->",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
        "## The hooks at a glance",
        "",
        "| Hook | When | Returns |",
        "| --- | --- | --- |",
    ]
    specs = hookspec_functions()
    for fn in specs:
        when = "request time (async)" if is_request_time(fn) else "start-up"
        returns = inspect.signature(fn).return_annotation
        out.append(f"| [`{fn.__name__}`](#{fn.__name__}) | {when} | `{cell(returns)}` |")
    for title, request_time in (("Start-up hooks", False), ("Request-time hooks", True)):
        out += ["", f"## {title}"]
        for fn in specs:
            if is_request_time(fn) == request_time:
                out += ["", f"### {fn.__name__}", "", "```python", signature(fn), "```", "",
                        inspect.cleandoc(fn.__doc__ or "")]
    out += ["", "## The public face", "", inspect.cleandoc(proxy.__doc__ or ""), "",
            "### `proxy`", "", "| Name | What it is |", "| --- | --- |"]
    for name in proxy.__all__:
        what = ("marks a function or method as a hook implementation: `@hookimpl`, "
                "`@hookimpl(tryfirst=True)`, `@hookimpl(trylast=True)`") if name == "hookimpl" else summary(
                    getattr(proxy, name))
        out.append(f"| `{name}` | {cell(what)} |")
    out += ["", "### Public helper modules", "",
            "Besides `proxy`, plugins may import these modules (their `__all__` names); every other "
            "`proxy.*` module is internal.", "", "| Module | For | Names |", "| --- | --- | --- |"]
    for module_name, purpose in proxy.PUBLIC_MODULES.items():
        module = importlib.import_module(module_name)
        names = ", ".join(f"`{n}`" for n in module.__all__)
        out.append(f"| `{module_name}` | {purpose} | {names} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="write docs/plugin-hooks.md from the code")
    parser.add_argument("--check", action="store_true", help="only say whether the page is up to date")
    args = parser.parse_args(argv)
    page = render()
    current = PAGE.read_text() if PAGE.exists() else ""
    if args.check:
        if current != page:
            print(f"{PAGE} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if current != page:
        PAGE.write_text(page)
        print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
