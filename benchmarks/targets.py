"""What the benchmark measures: the targets, and how each is started.

- ``direct``: a second mock upstream process (the same code as the one the
  proxies use, pinned where the proxies run): the limit, no proxy at all;
- ``floor``: ``benchmarks/floor.py``, the bare passthrough;
- ``tollway-core`` / ``tollway-full``: ``tollway serve`` on
  ``benchmarks/configs/core.yaml`` / ``full.yaml``;
- extra tollway configs (``--config NAME=FILE``) and external gateways
  (``--url NAME=URL``, not started, not watched for RSS).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

CONFIGS = Path(__file__).parent / "configs"
BENCH_KEY = "sk-tollway-bench"
BUILTIN_TARGETS = ("direct", "floor", "tollway-core", "tollway-full")


@dataclass
class Target:
    name: str
    kind: str  # direct | floor | tollway | url
    config: Path | None = None
    url: str = ""  # for kind url: the base URL ending in /v1; else filled in once listening
    skip: str | None = None  # why it will not run
    pid: int | None = None
    failed: str | None = None  # why it stopped running
    src: Path | None = None  # run tollway from this source tree (an A/B baseline), not the installed one

    @property
    def chat_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


def builtin(name: str) -> Target:
    if name == "direct":
        return Target(name, "direct")
    if name == "floor":
        return Target(name, "floor")
    if name == "tollway-core":
        return tollway_target(name, CONFIGS / "core.yaml")
    if name == "tollway-full":
        return tollway_target(name, CONFIGS / "full.yaml")
    raise ValueError(f"unknown target {name!r} (built-in targets: {', '.join(BUILTIN_TARGETS)})")


def tollway_target(name: str, config: Path) -> Target:
    """A tollway target; skipped (with the reason) when its config names built-in
    plugins whose modules do not exist yet."""
    target = Target(name, "tollway", config=config)
    missing = missing_plugins(config)
    if missing:
        target.skip = (f"plugins not available yet: {', '.join(missing)} "
                       f"(plugins.enabled in {config}); it runs once they exist")
    return target


def missing_plugins(config: Path) -> list[str]:
    from proxy.plugins import BUILTINS

    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []  # tollway itself will say what is wrong with the file
    enabled = (raw.get("plugins") or {}).get("enabled") or []
    out = []
    for name in enabled:
        module = BUILTINS.get(name) if isinstance(name, str) else None
        if module is None:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            out.append(name)
    return out


def parse_named(spec: str, default_prefix: str) -> tuple[str, str]:
    """``NAME=VALUE`` or ``VALUE`` (named after the file stem / the prefix)."""
    if "=" in spec and not spec.startswith(("http://", "https://")):
        name, value = spec.split("=", 1)
        return name.strip(), value.strip()
    if spec.startswith(("http://", "https://")):
        return default_prefix, spec
    return f"{default_prefix}{Path(spec).stem}", spec


def argv_for(target: Target, upstream_root: str) -> list[str]:
    """The command that serves ``target`` in front of the mock at ``upstream_root``."""
    if target.kind == "direct":
        return [sys.executable, "-m", "benchmarks.serve_mock"]
    if target.kind == "floor":
        return [sys.executable, "-m", "benchmarks.floor", "--upstream", upstream_root]
    if target.kind == "tollway":
        return [sys.executable, "-m", "proxy.cli", "serve", "--config", str(target.config), "--host", "127.0.0.1",
                "--port", "0"]
    raise ValueError(f"target {target.name} ({target.kind}) is not started by the harness")


def env_for(target: Target, upstream_root: str, rundir: Path) -> dict[str, str]:
    env = {"TOLLWAY_BENCH_UPSTREAM": upstream_root + "/v1",
           "TOLLWAY_BENCH_DB": f"sqlite:///{rundir.resolve() / (target.name + '.db')}",
           "TOLLWAY_BENCH_KEY": BENCH_KEY,
           "PYTHONUNBUFFERED": "1"}
    if target.src is not None:
        env["PYTHONPATH"] = str(target.src)
    return env


def baseline_targets(targets: list[Target], src: Path) -> list[Target]:
    """For each tollway target, the same config served by the tollway in ``src``
    (e.g. ``git archive OLD proxy plugins | tar -x -C DIR``): before/after in one run."""
    out = []
    for t in targets:
        if t.kind == "tollway":
            out.append(Target(f"{t.name}@base", "tollway", config=t.config, skip=t.skip, src=src.resolve()))
    return out
