"""The Files and Batches routes, in OpenAI's shapes (the official SDK reads them)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from proxy import Call, Gateway, ProxyError, Route, bad_request, json_response, read_json
from proxy.uploads import read_upload

from ..accounts.estimate import output_bound, prompt_bound
from ..accounts.http import authenticate
from ..accounts.money import MICRO, PriceBook, format_usd
from ..accounts.options import QuotasOptions
from .db import BATCH_COLUMNS
from .lines import ENDPOINTS, read_lines
from .listing import list_files, page_limit, query_value
from .recovery import ledger_id

if TYPE_CHECKING:
    from plugins.accounts import Accounts, KeyRecord

    from . import BatchesOptions
    from .runner import Runner

OUT, ERR = "file-batch-out-", "file-batch-err-"
INSERT_BATCH = (f"insert into tollway_batches ({', '.join(BATCH_COLUMNS)}) "
                f"values ({', '.join('?' * len(BATCH_COLUMNS))})")


class BatchRoutes:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self.accounts: Accounts | None = None
        self.runner: Runner | None = None
        self.options: BatchesOptions | None = None
        self.default_cap = 4096

    def attach(self, gateway: Gateway, accounts: Accounts | None, runner: Runner, options: BatchesOptions) -> None:
        self.gateway, self.accounts, self.runner, self.options = gateway, accounts, runner, options
        self.default_cap = (gateway.config.section("plugins.quotas") or QuotasOptions()).default_max_tokens

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/files", self.upload), web.get("/v1/files", self.list_files),
                web.get("/v1/files/{file_id}", self.file_info),
                web.get("/v1/files/{file_id}/content", self.file_content),
                web.post("/v1/batches", self.create), web.get("/v1/batches", self.list),
                web.get("/v1/batches/{batch_id}", self.get), web.post("/v1/batches/{batch_id}/cancel", self.cancel)]

    def _key(self, request: web.Request) -> KeyRecord | None:
        return authenticate(self.accounts, request) if self.accounts is not None else None

    # -- files ------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        key = self._key(request)
        assert self.gateway is not None
        upload, raw = await read_upload(request, self.gateway.config.server.max_upload_bytes)
        purpose = upload.fields.get("purpose")
        if purpose != "batch":
            raise bad_request(f"'purpose' must be \"batch\" (the only files this gateway keeps), got {purpose!r}",
                              "purpose")
        part = upload.file("file")
        if part is None:
            raise upload.missing_file("file", "'file' is required: the JSONL file of the batch's requests",
                                      "missing_file")
        if sum(f.name == "file" for f in upload.files) > 1:  # which one the batch reads would be a guess
            raise bad_request("'file' is given twice: send one JSONL file per upload", "file")
        if part.size == 0:
            raise bad_request("'file' is empty: send the batch's requests, one JSON object a line", "file",
                              "empty_file")
        data = raw[part.start:part.end]
        if b"\0" in data:  # JSON never holds a raw NUL, and PostgreSQL's text cannot store one
            line = data.count(b"\n", 0, data.index(b"\0")) + 1
            raise bad_request(f"'file' holds a NUL byte (line {line}); JSON lines never do: write it as \\u0000 "
                              "inside a string", "file")
        try:
            content = data.decode()
        except UnicodeDecodeError:
            raise bad_request("'file' must be UTF-8 text (JSON lines)", "file") from None
        file_id = "file-" + secrets.token_hex(12)
        now = time.time()
        await self.gateway.store.execute(
            "insert into tollway_files (id, account_id, key_id, purpose, filename, bytes, created_at, content) "
            "values (?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, key.account_id if key else None, key.id if key else None, purpose, part.filename, part.size,
             now, content))
        return json_response(_file_view(file_id, part.filename, part.size, now, purpose))

    async def list_files(self, request: web.Request) -> web.Response:
        """``GET /v1/files``: this key's account's uploads (``listing.py``)."""
        key = self._key(request)
        assert self.gateway is not None
        return json_response(await list_files(request, self.gateway.store, key.account_id if key else None,
                                              _file_view))

    async def _owned_file(self, request: web.Request) -> tuple[str, Any]:
        key = self._key(request)
        file_id = request.match_info["file_id"]
        assert self.gateway is not None
        store = self.gateway.store
        if file_id.startswith((OUT, ERR)):
            batch_id = file_id[len(OUT):]
            row = await store.fetchone("select account_id, created_at from tollway_batches where id = ?", (batch_id,))
            if row is not None and (key is None or row[0] == key.account_id):
                return file_id, row
        else:
            row = await store.fetchone("select account_id, filename, bytes, created_at, purpose, content "
                                       "from tollway_files where id = ?", (file_id,))
            if row is not None and (key is None or row[0] == key.account_id):
                return file_id, row
        raise ProxyError(404, f"no file {file_id!r} for this key's account", param="file_id", code="file_not_found")

    async def file_info(self, request: web.Request) -> web.Response:
        file_id, row = await self._owned_file(request)
        if file_id.startswith((OUT, ERR)):
            content = await self._result_file(file_id)
            return json_response(_file_view(file_id, file_id + ".jsonl", len(content), row[1], "batch_output"))
        return json_response(_file_view(file_id, row[1], row[2], row[3], row[4]))

    async def file_content(self, request: web.Request) -> web.Response:
        file_id, row = await self._owned_file(request)
        content = await self._result_file(file_id) if file_id.startswith((OUT, ERR)) else row[5].encode()
        return web.Response(body=content, content_type="application/jsonl")

    async def _result_file(self, file_id: str) -> bytes:
        """A batch's output (answered lines) or error (refused and failed lines) file."""
        assert self.gateway is not None
        batch_id = file_id[len(OUT):]
        ok = file_id.startswith(OUT)
        rows = await self.gateway.store.fetchall(
            "select line, custom_id, status_code, response, error_code, error_message from tollway_batch_lines "
            f"where batch_id = ? and status = '{'done' if ok else 'failed'}' order by line", (batch_id,))
        out = []
        for line, custom_id, status, response, code, message in rows:
            body: Any = None
            if response:
                try:
                    body = orjson.loads(response)
                except orjson.JSONDecodeError:
                    body = response
            # request_id: the line's ledger row (what an operator looks the charge up by)
            answer = {"status_code": status, "request_id": ledger_id(batch_id, line), "body": body} if status else None
            error = None if ok else {"code": code, "message": message}
            out.append(orjson.dumps({"id": f"batch_req_{batch_id}_{line}", "custom_id": custom_id,
                                     "response": answer, "error": error}))
        return b"".join(line + b"\n" for line in out)

    # -- batches ----------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        key = self._key(request)
        assert self.gateway is not None and self.options is not None and self.runner is not None
        gateway = self.gateway
        body, _ = await read_json(request, gateway.config.server.max_body_bytes)
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}", "endpoint")
        if body.get("completion_window", "24h") != "24h":
            raise bad_request("'completion_window' must be \"24h\"", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad_request("'metadata' must be an object of strings", "metadata")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise bad_request("'input_file_id' is required: the id POST /v1/files answered", "input_file_id")
        row = await gateway.store.fetchone("select account_id, content, purpose from tollway_files where id = ?",
                                           (file_id,))
        if row is None or (key is not None and row[0] != key.account_id):
            raise ProxyError(404, f"no file {file_id!r} for this key's account", param="input_file_id",
                             code="file_not_found")
        lines = read_lines(gateway, row[1], endpoint, key.models if key else None, self.options.max_lines)
        worst = self._worst_case(key, endpoint, [ln.body for ln in lines if ln.body is not None])
        if key is not None and self.accounts is not None:
            account = self.accounts.account_of(key)
            if not account.unlimited and worst > account.available:
                raise ProxyError(402, f"insufficient credits: this batch may cost up to ${format_usd(worst)} (each "
                                      "line's worst case at the batch price; lower max_tokens to need less) and the "
                                      f"key's account has ${format_usd(max(account.available, 0))} left",
                                 code="insufficient_credits")
        batch_id = "batch_" + secrets.token_hex(12)
        now = time.time()
        async with gateway.store.transaction() as tx:
            await tx.execute(
                INSERT_BATCH,
                (batch_id, key.account_id if key else None, key.id if key else None, endpoint, file_id, "24h",
                 orjson.dumps(metadata).decode() if metadata else None, "in_progress", len(lines), now, now,
                 None, None, None))
            await tx.executemany(
                "insert into tollway_batch_lines (batch_id, line, custom_id, body, status, status_code, error_code, "
                "error_message, charged) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(batch_id, ln.number, ln.custom_id, ln.body.decode() if ln.body is not None else None,
                  "pending" if ln.error is None else "failed", None if ln.error is None else 400,
                  ln.error[0] if ln.error else None, ln.error[1] if ln.error else None, 1 if ln.error else 0)
                 for ln in lines])
        self.runner.wake.set()
        return json_response(await self._view(batch_id))

    def _worst_case(self, key: KeyRecord | None, endpoint: str, bodies: list[bytes]) -> int:
        """Micro-units of the billing currency: every line's reservation (prompt bound +
        output cap) at the batch price, on the dearest model its name may reach (a group's
        members, ``auto``'s choices), at the prices of the config serving now."""
        assert self.gateway is not None
        config = self.gateway.config
        billing = config.section("billing")
        prices = PriceBook(config.models, billing.usd_rate if billing is not None else 1.0)
        kind, dialect = ENDPOINTS[endpoint]
        total = 0
        for raw in bodies:
            body = orjson.loads(raw)
            call = Call(None, kind, body, raw, dialect)
            worst = 0
            for name in self._reachable(key, body["model"]):
                model = config.models[name]
                call.route = Route(name, model.upstream_model, self.gateway.providers[model.provider], model)
                table = prices.of(call.route)
                cost = table.cost(prompt_bound(call), output_bound(call, self.default_cap))
                worst = max(worst, -(-cost * table.batch_ppm // MICRO))
            total += worst
        return total

    def _reachable(self, key: KeyRecord | None, name: str) -> list[str]:
        """The models with an upstream that a line naming ``name`` may be served by."""
        assert self.gateway is not None
        models = self.gateway.config.models
        model = models[name]
        if model.group is not None:
            return list(model.group)
        if model.auto is not None:
            allowed = key.models if key is not None else None
            return [n for n, m in models.items() if not m.virtual and (allowed is None or n in allowed)]
        return [name]

    async def _view(self, batch_id: str) -> dict:
        assert self.gateway is not None
        store = self.gateway.store
        row = await store.fetchone(f"select {', '.join(BATCH_COLUMNS)} from tollway_batches where id = ?", (batch_id,))
        assert row is not None
        batch = dict(zip(BATCH_COLUMNS, row, strict=True))
        counts = dict(await store.fetchall("select status, count(*) from tollway_batch_lines where batch_id = ? "
                                           "group by status", (batch_id,)))
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        finished = batch["status"] in ("completed", "cancelled", "expired")
        return {
            "id": batch_id, "object": "batch", "endpoint": batch["endpoint"], "errors": None,
            "input_file_id": batch["input_file_id"], "completion_window": batch["completion_window"],
            "status": batch["status"], "output_file_id": OUT + batch_id if finished and done else None,
            "error_file_id": ERR + batch_id if finished and failed else None,
            "created_at": int(batch["created_at"]), "in_progress_at": _int(batch["in_progress_at"]),
            "expires_at": int(batch["created_at"]) + 86400, "finalizing_at": None,
            "completed_at": _int(batch["completed_at"]) if batch["status"] != "expired" else None,
            "failed_at": None, "expired_at": _int(batch["completed_at"]) if batch["status"] == "expired" else None,
            "cancelling_at": _int(batch["cancelling_at"]), "cancelled_at": _int(batch["cancelled_at"]),
            "request_counts": {"total": batch["total"], "completed": done, "failed": failed},
            "metadata": orjson.loads(batch["metadata"]) if batch["metadata"] else None,
        }

    async def _owned_batch(self, request: web.Request) -> str:
        key = self._key(request)
        batch_id = request.match_info["batch_id"]
        assert self.gateway is not None
        row = await self.gateway.store.fetchone("select account_id from tollway_batches where id = ?", (batch_id,))
        if row is None or (key is not None and row[0] != key.account_id):
            raise ProxyError(404, f"no batch {batch_id!r} for this key's account", param="batch_id",
                             code="batch_not_found")
        return batch_id

    async def get(self, request: web.Request) -> web.Response:
        return json_response(await self._view(await self._owned_batch(request)))

    async def cancel(self, request: web.Request) -> web.Response:
        batch_id = await self._owned_batch(request)
        assert self.gateway is not None and self.runner is not None
        await self.gateway.store.execute("update tollway_batches set status = 'cancelling', cancelling_at = ? "
                                         "where id = ? and status = 'in_progress'", (time.time(), batch_id))
        self.runner.wake.set()
        return json_response(await self._view(batch_id))

    async def list(self, request: web.Request) -> web.Response:
        key = self._key(request)
        assert self.gateway is not None
        limit = page_limit(request, 20, 100)
        after = query_value(request, "after")
        owner = "" if key is None else " and account_id = ?"
        params: list[Any] = [] if key is None else [key.account_id]
        sql = "select id, created_at from tollway_batches where 1 = 1" + owner
        if after is not None:
            row = await self.gateway.store.fetchone("select created_at from tollway_batches where id = ?" + owner,
                                                    (after, *params))
            if row is None:  # (another account's batch is no cursor either)
                raise bad_request(f"'after' must be the id of a batch of this key's account, got {after[:60]!r}",
                                  "after")
            sql += " and (created_at < ? or (created_at = ? and id < ?))"
            params += [row[0], row[0], after]
        rows = await self.gateway.store.fetchall(sql + " order by created_at desc, id desc limit ?",
                                                 (*params, limit + 1))
        data = [await self._view(r[0]) for r in rows[:limit]]
        return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit})


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def _file_view(file_id: str, filename: str, size: int, created: float, purpose: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(created), "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}
