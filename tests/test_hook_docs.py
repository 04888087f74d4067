"""The hooks reference and the public face cannot drift from the code.

- ``docs/plugin-hooks.md`` is exactly what ``python -m proxy.hookdoc`` makes from
  ``proxy/hookspecs.py`` and ``proxy/__init__.py``;
- every hookspec has a docstring and a section of its own in that page;
- every hookspec is named in some test other than this one (so each is exercised);
- the built-in plugins import from the core only ``proxy`` and its public helper modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import proxy
from proxy import hookdoc

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [fn.__name__ for fn in hookdoc.hookspec_functions()]


def test_the_hooks_page_is_made_from_the_code():
    assert hookdoc.PAGE.read_text() == hookdoc.render(), (
        f"docs/plugin-hooks.md is out of date: run {hookdoc.COMMAND} and commit the page")


def test_the_check_command_says_whether_the_page_is_current(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "plugin-hooks.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(hookdoc, "PAGE", stale)
    assert hookdoc.main(["--check"]) == 1 and "out of date" in capsys.readouterr().err
    assert hookdoc.main([]) == 0 and stale.read_text() == hookdoc.render()
    assert hookdoc.main(["--check"]) == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    fn = getattr(proxy.hookspecs, hook)
    assert fn.__doc__ and len(fn.__doc__.split()) >= 8, f"{hook} needs a docstring that says what it is for"
    page = hookdoc.PAGE.read_text()
    assert f"\n### {hook}\n" in page and f"def {hook}(" in page


def test_every_hook_is_named_in_a_test():
    here = Path(__file__).name
    text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != here)
    unnamed = [hook for hook in HOOKS if not re.search(rf"\b{hook}\b", text)]
    assert not unnamed, f"no test exercises these hooks by name: {unnamed}"


def test_there_are_hooks_to_check():
    assert len(HOOKS) >= 17 and "tollway_authenticate" in HOOKS and "tollway_startup" in HOOKS


def core_imports(path: Path) -> set[str]:
    """The ``proxy`` modules a file imports (``from proxy import X`` counts as ``proxy``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "proxy" or node.module.startswith("proxy."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "proxy" or a.name.startswith("proxy."))
    return found


def test_plugins_use_only_the_public_face():
    allowed = {"proxy", *proxy.PUBLIC_MODULES}
    files = [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "tests" / "example_plugins").rglob("*.py")]
    internal = {f"{p.relative_to(ROOT)}: {m}" for p in files for m in core_imports(p) - allowed}
    assert not internal, f"plugins import internal core modules (use proxy or proxy.PUBLIC_MODULES): {internal}"


def test_the_public_face_exists():
    for name in proxy.__all__:
        assert hasattr(proxy, name), name
    for module in proxy.PUBLIC_MODULES:
        imported = __import__(module, fromlist=["__all__"])
        for name in imported.__all__:
            assert hasattr(imported, name), f"{module}.{name}"
