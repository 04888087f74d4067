"""The plugin contract: every hook tollway calls, when, in which order, and why.

A plugin is a module, or an object, with functions marked ``@hookimpl``
(``from proxy import hookimpl``). Implement only the hooks you need, and take
only the arguments you need (pluggy passes arguments by name).

**Two kinds of hook.**

*Start-up hooks* (``tollway_config_schema``, ``tollway_config_check``, ``tollway_providers``,
``tollway_dialects``, ``tollway_routes``, ``tollway_commands``,
``tollway_startup``, ``tollway_shutdown``) are called through pluggy as usual,
once per process. ``tollway_event`` also goes through pluggy, whenever a plugin
emits an event (rarely; see there); ``tollway_reload`` (and ``tollway_config_check``
again) on each reload of the config.

*Request-time hooks* (``tollway_authenticate`` ... ``tollway_finish``) take the
``call`` (a ``proxy.Call``); an implementation may be ``async def`` or a plain
``def``, which returns its answer (None, or a value where the hook takes one) or
an awaitable the core awaits (datasette's ``await_me_maybe``: a ``def`` that
awaits only on a rare path can return a coroutine there). A plain ``def`` that
does not await is the cheaper kind: it costs no coroutine. A plain ``def`` that
returns anything but None or an awaitable where the hook returns None is a bug
(a ``TypeError`` naming it: a 500 from admit or usage, logged from settle or
finish). pluggy cannot await, so the core collects each hook's implementations
once at start-up, in pluggy's call order, and calls them itself. Order: plugins registered
later run first (user plugins before built-ins); ``tryfirst=True`` /
``trylast=True`` on ``@hookimpl`` move an implementation to the front/back.
An implementation of ``tollway_admit``, ``tollway_usage``, ``tollway_settle`` or
``tollway_finish`` that has nothing to do on most requests may say when it has:
``@proxy.only_if(KEY)`` (under ``@hookimpl``) and the core calls it only when the
``proxy.StateKey`` ``KEY`` is in ``call.state`` at its turn (``only_if(KEY,
present=False)``: only when it is not). Unmarked implementations are always called.

Order matters where plugins depend on each other; the built-ins pin theirs
so that the order of ``plugins.enabled`` does not: ``auth`` refuses a model
outside the key's allowlist in ``tollway_resolve`` (``tryfirst``) and
``routing`` resolves last (``trylast``); the rate limiter claims before
quotas claim credit (``ratelimit``'s ``tollway_admit`` is ``tryfirst``), and
what both claimed of the shared counters is checked and taken in one step by
a ``trylast`` admit (``plugins/accounts/claims.py``: one Redis round trip);
``quotas`` takes the money in ``tollway_settle`` (``tryfirst``) and
``ledger`` records it after everyone else (``trylast``). A third-party
plugin that needs the principal runs in ``tollway_admit`` or later; one that
needs the final cost, in ``tollway_settle``.

**What the call carries.** ``call`` (a ``proxy.Call``) groups what exists at
each phase: ``id`` (the request's id, made by the core when the call is: every
answer's ``x-tollway-request-id`` header, already in ``response.headers``, and the
ledger row's id) and the request as sent (``body``, ``model``, ``stream``,
``dialect``...) from the start, ``principal`` (a ``proxy.Principal``) after authenticate,
``route`` after resolve, ``response.headers`` to add from admit on,
``billing`` (usage, cost, ``usage_extra``) from usage on, and the outcome in
``response`` (status, error, client_gone) and ``timing`` by settle.

**Sharing.** Per-request state goes in ``call.state`` under a
``proxy.StateKey`` defined next to the plugin that writes it; readers import
the key (e.g. the ledger reads the quotas plugin's ``RESERVATION``). An object
several plugins use (the accounts book) is a gateway service under a
``proxy.ServiceKey``: ``await gateway.services.open(KEY)`` in
``tollway_startup`` opens it once for all of them, and the gateway closes it
after every ``tollway_shutdown`` has run.

**Failing a request.** A request-time hook answers the client with an error
by raising ``proxy.ProxyError(status, message, ...)``. Any other exception is
a bug: it is logged with its traceback and the client gets a bare 500.

**A request's way through.** authenticate -> resolve -> admit -> lookup ->
(upstream) -> usage -> settle -> finish. See each hook for what has been set
on ``call`` by then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from aiohttp import web

    from .call import CachedResponse, Call, Principal, Route
    from .config import Config
    from .dialects import Dialect
    from .errors import ProxyError
    from .events import Event
    from .gateway import Gateway
    from .provider import Provider
    from .snapshot import Snapshot

hookspec = pluggy.HookspecMarker("tollway")


# -- start-up ------------------------------------------------------------------------

@hookspec
def tollway_config_schema() -> dict[str, Any] | None:
    """Declare the config sections this plugin reads, with their types.

    Return ``{dotted section path: type}``, e.g. ``{"plugins.ledger":
    LedgerOptions}`` or ``{"keys": list[KeyConfig]}``. Types are dataclasses
    (or ``list[...]``/``dict[str, ...]`` of them); the core validates the YAML
    against them at start-up, naming the path of any mistake, and stores the
    built value in ``gateway.config.sections[path]``. A section present in the
    YAML but declared by no enabled plugin stops start-up.
    """


@hookspec
def tollway_config_check(config: Config) -> None:
    """Check the whole, validated config for what only this plugin knows is wrong
    (e.g. a key naming a model that does not exist, or settings the plugin
    cannot honour). Raise ``proxy.ConfigError("path.to.field: what is wrong")``.

    Runs when the config is built, before anything starts: ``tollway check``
    and the parent of ``--workers`` processes see these errors too.
    """


@hookspec
def tollway_providers() -> dict[str, type[Provider]] | None:
    """Provider adapter classes by kind, e.g. ``{"openai": OpenAIProvider}``.

    The core makes one instance per entry of ``providers:`` in the YAML whose
    ``kind`` matches. A later-registered plugin's kind replaces an earlier one.
    """


@hookspec
def tollway_dialects() -> dict[str, Dialect] | None:
    """Client dialects by name beyond the core's ``openai``, e.g. ``anthropic``."""


@hookspec
def tollway_routes(gateway: Gateway) -> list[web.AbstractRouteDef] | None:
    """Extra HTTP routes (aiohttp route definitions), e.g. an admin API.

    Called once while the app is built. Routes are plain aiohttp handlers;
    to answer with an error, raise ``proxy.ProxyError``: the app's error
    middleware renders it (OpenAI shape; Anthropic's under ``/v1/messages``),
    and any other exception as a bare 500 with the traceback in the log.
    """


@hookspec
def tollway_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tollway`` CLI sub-commands.

    Add a parser with ``subparsers.add_parser(...)``, give it a ``--config``
    with ``proxy.cli.add_config_arg(parser)``, and set
    ``func=proxy.cli.gateway_command(async_fn)`` with ``set_defaults``, where
    ``async_fn(gateway, args) -> int``: the CLI loads the config, starts the
    gateway's storage and plugins (no server), runs the function and exits
    with its return value. Called for every importable built-in plugin and
    installed entry point, whatever the config enables.
    """


@hookspec
def tollway_startup(gateway: Gateway) -> Awaitable[None] | None:
    """The gateway is starting: config loaded, storage open, providers made.

    Return an awaitable (e.g. call an ``async def``) to do async set-up:
    load state, start background tasks. Raise ``proxy.ConfigError`` to
    stop start-up with a message. Runs in registration order (built-ins first).
    """


@hookspec
def tollway_upstream_health(event: Any) -> None:
    """An upstream deployment's breaker changed state (the built-in ``routing``
    plugin's ``HealthEvent``: ``deployment`` (``provider/model``), ``previous``
    and ``state`` (``closed``, ``open``, ``half_open``), ``reason``,
    ``retry_in``: seconds until an open breaker lets probes through, and
    ``remote``: True when the change was another instance's, taken from the
    fleet's shared health (Redis counters)).

    Called synchronously, in the request that caused the change (or, for a
    remote one, when its notice arrives): record or queue what you need (an
    alert, a metric) and return; never block. With several instances, each
    one tells of the changes it sees; count only those with ``remote`` False
    to count each change once.
    """


@hookspec
def tollway_reload(gateway: Gateway, snapshot: Snapshot) -> Callable[[], Awaitable[None] | None] | None:
    """A new config is about to take effect (SIGHUP, ``POST /admin/reload``,
    ``tollway reload``): prepare what you derive from it, and return the
    function that puts it in place.

    ``snapshot.config`` has passed every check ``tollway check`` makes, and
    ``snapshot.providers`` holds its adapters (an unchanged provider keeps its
    object). Build here what you built from ``gateway.config`` in
    ``tollway_startup`` (routes, price tables, options), without changing
    what requests see yet; raise ``proxy.ConfigError("path: what is wrong")``
    to refuse the reload (the running config stays). Return ``apply``, a
    function of no arguments: the core swaps in the snapshot and calls every
    plugin's ``apply`` in one step of the event loop, so no request sees half
    a reload. ``apply`` may return an awaitable for follow-up work (e.g.
    writing keys to the store), awaited after every ``apply`` has run.

    A request keeps the snapshot it started with (``call.snapshot``): derive
    per-request values from ``call.route`` / ``call.snapshot``, not from
    state a reload replaced, where it matters (a stream in flight is billed
    at the prices it started with). A plugin that does not implement this
    hook keeps what it read at start-up: a change to a section it declared
    (``tollway_config_schema``) is refused as needing a restart.
    """


@hookspec
def tollway_shutdown(gateway: Gateway) -> Awaitable[None] | None:
    """The gateway is stopping, after in-flight requests finished (or the
    shutdown timeout passed) and before storage closes: flush what you hold."""


@hookspec
def tollway_event(gateway: Gateway, event: Event) -> None:
    """Something an operator may want to hear about happened (a ``proxy.Event``:
    ``balance_low``, ``budget``, ``key_expiring``, ``deployment_opened``,
    ``deployment_closed``, or a plugin's own ``plugin.event``).

    A plugin that sees one calls ``gateway.emit(Event(name, data, key=...))``; every
    implementation of this hook is called with it, at once, in the emitter's task,
    possibly on a request's path: return at once and do any I/O elsewhere (the
    ``alerts`` plugin appends it to a list its sender task empties). Give the event a
    ``key`` when the same thing may be seen twice (by two workers, again after a
    restart, at every check): events with the same name and key share an id, and
    the alerts outbox sends each id once. Exceptions are logged, not raised to the emitter.

    The names the alerts plugin knows, and their ``data``: ``budget`` (``scope``, ``id``, ``name``,
    ``period``, ``percent`` 50/80/100, ``spent``, ``limit``, ``currency``, ``resets_at``;
    key ``scope:id:period:period start:percent``), ``balance_low`` and ``key_expiring``
    (the alerts plugin's own checks), ``deployment_opened`` / ``deployment_closed``
    (``deployment``, ``reason``: for a plugin that keeps upstream health to send
    when a deployment leaves rotation and when it comes back).
    """


# -- request time (async def or def; dispatched by the core) --------------------------

@hookspec
async def tollway_authenticate(call: Call) -> Principal | None:
    """Who is calling? Return a ``proxy.Principal`` (any object with an ``id``
    and an ``account_id``: the credential and the tenant) or None.

    First non-None wins, and is stored in ``call.principal``. Raise
    ProxyError(401) to reject. If no plugin implements this hook, every
    request is anonymous (``call.principal`` stays None).
    """


@hookspec
async def tollway_resolve(call: Call) -> Route | None:
    """Where does ``call.model`` go? Return a ``proxy.Route`` or None.

    First non-None wins, and is stored in ``call.route``. The built-in
    ``routing`` plugin resolves the YAML ``models:`` table; a plugin running
    before it can route differently. None from all: 404 unknown model.
    """


@hookspec
async def tollway_admit(call: Call) -> None:
    """May this request go ahead? All implementations run, in order.

    ``call.principal`` and ``call.route`` are set. Raise ProxyError (403, 402,
    429...) to refuse. Add response headers to ``call.response.headers``
    (they are sent on success and on refusal). Reserve what you must release
    in ``tollway_finish``, which always runs after admit was reached.
    """


@hookspec
async def tollway_lookup(call: Call) -> CachedResponse | None:
    """Is there an answer without the upstream? First non-None wins.

    A ``proxy.CachedResponse`` short-circuits the upstream call; the core
    renders it as JSON or replays it as a stream in the client's dialect,
    then ``tollway_usage``, ``tollway_settle`` and ``tollway_finish`` run as
    usual (``call.response.cache_status`` tells them it was a hit).
    """


@hookspec
async def tollway_stream_filter(call: Call) -> Callable[[bytes], bytes] | None:
    """Want to see (or rewrite) the bytes of this stream? Return a function
    ``bytes -> bytes`` applied to every write to the client, or None.

    Called once per streamed request, before the first byte. When every
    plugin answers None (the usual case) the stream is a pure passthrough
    and no plugin code runs per chunk.
    """


@hookspec
async def tollway_usage(call: Call) -> None:
    """The upstream's usage is known (``call.billing.usage``; None if it sent none).

    Runs before the end of the answer is written, so plugins can price it
    (set ``call.billing.cost_micro``) and add fields to the usage the client sees
    (``call.billing.usage_extra``) and, for non-stream answers, response headers
    (``call.response.headers``). All implementations run, in order.
    """


@hookspec
async def tollway_settle(call: Call) -> None:
    """The answer has been written (or failed after admission).

    Account for it: settle reservations, write the ledger, store the cache
    entry. ``call.billing.usage``, ``call.billing.cost_micro``, ``call.response.status``,
    ``call.response.error`` and ``call.response.client_gone`` tell what happened. Runs for
    every request that reached admit. All implementations run; one raising
    does not stop the others.

    Settling first: an implementation decorated ``@proxy.settles_before_end`` (under
    ``@hookimpl``) also runs right before the answer's last bytes are written, when a plugin
    set ``call.response.settle_before_end`` in ``tollway_admit`` (quotas does, for a charge
    that goes to shared counters: it must leave the process before the client has the whole
    answer, or a kill -9 in between would give the answer away). It then sees the outcome as
    known at that moment and must do nothing when it runs again after the answer.
    """


@hookspec
async def tollway_finish(call: Call) -> None:
    """Always runs last, for every request (in a ``finally``): release what
    admit took, write access logs. Must not raise."""


@hookspec
async def tollway_attempt(call: Call, route: Route, error: ProxyError | None) -> None:
    """One upstream attempt has its answer: ``error`` is None when the upstream
    answered with a success status (its head arrived; a stream's body follows),
    else what the client would be told (an error status, a timeout, a refused
    connection). ``call.timing.attempt_started`` is when the request was sent
    (``time.perf_counter()``). All implementations run, in order; for
    bookkeeping (health, latency), so keep it short and never raise.
    """


@hookspec
async def tollway_retry(call: Call, error: ProxyError) -> Route | None:
    """The attempt on ``call.route`` failed with ``error`` and nothing has
    reached the client yet: return the ``proxy.Route`` to try next, or None
    to answer the error. First non-None wins. ``call.upstream_attempts``
    counts the attempts made so far. Only return a route for failures the
    upstream did not bill (a 429, an overloaded answer, a refused connection):
    the request is billed once, for the attempt that answers. The built-in
    ``routing`` plugin answers with the model's other deployments, then its
    ``fallbacks`` (bounded by ``routing.retries``, with backoff).
    """


@hookspec
async def tollway_reroute(call: Call, previous: Route) -> None:
    """The call moves to ``call.route`` after its attempt on ``previous`` failed
    (a ``tollway_retry`` hook named it). Plugins that hold amounts sized by the
    route (credit, budgets: a fallback may be dearer) adjust them here; raise
    ProxyError to refuse this route: the retry hooks are asked for another,
    and when none is left the refusal is the answer. All implementations run,
    in order.
    """


@hookspec
async def tollway_visible_models(call: Call, models: list[str]) -> list[str] | None:
    """Filter ``GET /v1/models`` for this caller: return the subset of
    ``models`` (public names) the caller may use, or None for no change.
    Runs after authentication; each implementation sees the previous result.
    """
