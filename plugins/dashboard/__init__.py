"""The dashboard: the operator's console at /dashboard and the customer's usage page at /dashboard/usage.

Server-rendered HTML (Jinja2 templates in ``templates/``), a little
hand-written JavaScript and uPlot for charts (``static/``, shipped in the
package: nothing is loaded from the internet). Every chart and table reads
the ledger writer's rollups (``plugins/accounts/rollups.py``); the request
log reads ledger rows by index, one query per page. Nothing here runs on the
API's request path.

Modules: ``console`` (the Dashboard and the operator's pages), ``keys`` (key
and account pages; changes through the admin API's handlers), ``customer``
(the usage page), ``auth`` + ``sessions`` (sign-in, cookies, CSRF, the
sign-in rate limit; sessions live in the store, so every worker and
instance shares them), ``queries`` + ``ranges`` (rollup reads), ``requestlog``,
``render`` (Jinja2, formats, security headers), ``options`` (YAML).
"""

from __future__ import annotations

from aiohttp import web

from proxy import Gateway, hookimpl
from proxy.schema import ConfigError

from .console import Dashboard
from .customer import CustomerPages
from .keys import KeyPages
from .options import DashboardOptions
from .sessions import migrate_sessions


class Plugin:
    def __init__(self) -> None:
        self.dashboard: Dashboard | None = None

    @hookimpl
    def tollway_config_schema(self) -> dict:
        return {"plugins.dashboard": DashboardOptions}

    @hookimpl
    def tollway_config_check(self, config) -> None:
        options = config.section("plugins.dashboard") or DashboardOptions()
        for problem in options.problems():
            raise ConfigError(f"plugins.dashboard.{problem}")
        if "ledger" not in config.plugins.enabled:
            raise ConfigError("plugins.enabled: the dashboard reads what the ledger plugin records; "
                              "add 'ledger' (and 'auth' for keys) to plugins.enabled")

    @hookimpl
    def tollway_startup(self, gateway: Gateway):
        return migrate_sessions(gateway.store)

    @hookimpl
    def tollway_routes(self, gateway: Gateway) -> list[web.AbstractRouteDef]:
        options = gateway.config.section("plugins.dashboard") or DashboardOptions()
        dash = self.dashboard = Dashboard(gateway, options)
        return [*dash.routes(), *KeyPages(dash).routes(), *CustomerPages(dash).routes()]
