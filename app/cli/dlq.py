"""``faust -A app dlq list|show|redrive``: manage dead letters through a running worker's HTTP API.

Exit status, for scripts: 0 done; 1 nothing matched, or some letters were not redriven;
2 bad usage, or the worker cannot be reached or refused the token.

    faust -A app dlq list --status dead --all
    faust -A app dlq show 5f0c...
    faust -A app dlq redrive --source-topic orders
    faust -A app dlq redrive --id 5f0c... --id 77ab...
    faust -A app dlq redrive --all
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from tqdm import tqdm

OK, NOTHING, USAGE = 0, 1, 2
ACTIONS = ("list", "show", "redrive")
#: Letters per ``POST /dlq/redrive`` call: small enough for a smooth progress bar.
REDRIVE_BATCH = 20
PAGE = 500

Say = Callable[..., None]


class DlqError(Exception):
    """The worker could not be used (unreachable, refused, answered an error); exit status 2."""


class Client:
    """The worker's dead-letter endpoints."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.session, self.url = session, url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        headers = {**self.headers, **({"Content-Type": "application/json"} if data is not None else {})}
        try:
            async with self.session.request(method, self.url + path, data=data, headers=headers) as resp:
                text = await resp.text()
                if resp.status == 401:
                    raise DlqError(f"{self.url} refused the admin token: pass --token or set ORDERSTREAM_ADMIN_TOKEN")
                if resp.status >= 400:
                    raise DlqError(f"{method} {self.url}{path} answered {resp.status}: {text[:300]}")
                return orjson.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DlqError(
                f"cannot reach the worker at {self.url} ({exc or type(exc).__name__}): is it running? "
                "pass --url http://host:port"
            ) from exc

    async def page(
        self, *, source_topic: str | None, status: str | None, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """One page of ``GET /dlq``."""
        query = {"limit": limit, "source_topic": source_topic, "status": status, "cursor": cursor}
        result: dict[str, Any] = await self._call("GET", "/dlq?" + urlencode({k: v for k, v in query.items() if v}))
        return result

    async def all(self, *, source_topic: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Every letter matching the filters, following ``next_cursor``."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.page(source_topic=source_topic, status=status, limit=PAGE, cursor=cursor)
            out.extend(page["messages"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def redrive(self, ids: Sequence[str]) -> list[str]:
        """Redrive these letters; return the ids the worker re-injected."""
        result = await self._call("POST", "/dlq/redrive", {"ids": list(ids)})
        return list(result.get("ids", []))


def describe(letter: dict[str, Any]) -> str:
    """One line per letter: id, status, where it came from, the error."""
    error = " ".join(str(letter.get("error", "")).split())
    if len(error) > 100:
        error = error[:97] + "..."
    where = f"{letter.get('source_topic')}[{letter.get('partition')}]@{letter.get('offset')}"
    return f"{letter['id']}  {letter.get('status', '?'):<8}  {where:<32}  {letter.get('stage', '')}: {error}"


async def run(
    action: str,
    ids: Sequence[str],
    *,
    url: str,
    token: str | None,
    source_topic: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    all_pages: bool = False,
    as_json: bool = False,
    progress: bool = True,
    say: Say = print,
    timeout: float = 30.0,
) -> int:
    """Carry out one ``dlq`` action and return its exit status."""
    if action not in ACTIONS:
        say(f"error: unknown action {action!r}; use one of {', '.join(ACTIONS)}", err=True)
        return USAGE
    if not 1 <= limit <= PAGE:
        say("error: --limit must be from 1 to 500", err=True)
        return USAGE
    if action == "show" and len(ids) != 1:
        say("error: dlq show needs exactly one dead-letter id", err=True)
        return USAGE
    if action == "list" and ids:
        say("error: dlq list takes no ids; filter with --source-topic and --status", err=True)
        return USAGE
    if action == "redrive" and not (ids or source_topic or all_pages):
        say("error: say what to redrive: --id ID (repeatable), --source-topic TOPIC, or --all", err=True)
        return USAGE
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            client = Client(session, url, token)
            if action == "list":
                return await _list(client, source_topic, status, limit, cursor, all_pages, as_json, say)
            if action == "show":
                return await _show(client, ids[0], say)
            return await _redrive(client, ids, source_topic, progress, say)
    except DlqError as exc:
        say(f"error: {exc}", err=True)
        return USAGE


async def _list(
    client: Client,
    source_topic: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    all_pages: bool,
    as_json: bool,
    say: Say,
) -> int:
    if all_pages:
        letters, next_cursor = await client.all(source_topic=source_topic, status=status), None
    else:
        page = await client.page(source_topic=source_topic, status=status, limit=limit, cursor=cursor)
        letters, next_cursor = page["messages"], page.get("next_cursor")
    if as_json:
        say(orjson.dumps({"messages": letters, "next_cursor": next_cursor}).decode())
    else:
        for letter in letters:
            say(describe(letter))
        if next_cursor:
            say(f"more: --cursor {next_cursor} (or --all)")
        say(f"{len(letters)} dead letter(s)", err=True)
    return OK if letters else NOTHING


async def _show(client: Client, dlq_id: str, say: Say) -> int:
    for letter in await client.all():
        if letter["id"] == dlq_id:
            say(orjson.dumps(letter, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
            return OK
    say(f"no dead letter {dlq_id}", err=True)
    return NOTHING


async def _redrive(client: Client, ids: Sequence[str], source_topic: str | None, progress: bool, say: Say) -> int:
    letters = await client.all(source_topic=source_topic, status="dead")
    if ids:
        wanted = set(ids)
        letters = [m for m in letters if m["id"] in wanted]
        for missing in sorted(wanted - {m["id"] for m in letters}):
            say(f"not redriven: {missing} (no such dead letter, or already redriven)", err=True)
    chosen = [m["id"] for m in letters]
    if not chosen:
        say("nothing to redrive", err=True)
        return NOTHING
    done: list[str] = []
    with tqdm(total=len(chosen), unit="letter", desc="redrive", disable=not progress, leave=True) as bar:
        for i in range(0, len(chosen), REDRIVE_BATCH):
            batch = chosen[i : i + REDRIVE_BATCH]
            done.extend(await client.redrive(batch))
            bar.update(len(batch))
    skipped = [i for i in chosen if i not in set(done)]
    for dlq_id in skipped:
        say(f"not redriven: {dlq_id} (it cannot be: a truncated original, or refused to its client)", err=True)
    say(f"redriven {len(done)} of {len(chosen)} dead letter(s)")
    return OK if not skipped and len(done) == len(ids or chosen) else NOTHING


# --- `faust -A app dlq` ----------------------------------------------------------------

from faust.cli import AppCommand, argument, option  # noqa: E402  # the CLI half needs the built app

from app.main import app, settings  # noqa: E402


async def _dlq_command(
    self: AppCommand,
    action: str,
    ids: tuple[str, ...],
    url: str | None,
    token: str | None,
    source_topic: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    all_pages: bool,
    as_json: bool,
    progress: bool,
    id_options: tuple[str, ...],
) -> None:
    """List, show and redrive dead letters through a running worker (exit 0 ok, 1 none/failed, 2 usage)."""

    def say(text: str, err: bool = False) -> None:
        self.say(text, file=self.stderr if err else self.stdout)

    status_code = await run(
        action,
        [*ids, *id_options],
        url=url or f"http://127.0.0.1:{settings.web_port}",
        token=token if token is not None else (os.environ.get("ORDERSTREAM_ADMIN_TOKEN") or settings.admin_token),
        source_topic=source_topic,
        status=status,
        limit=limit,
        cursor=cursor,
        all_pages=all_pages,
        as_json=as_json,
        progress=progress,
        say=say,
    )
    if status_code:
        raise SystemExit(status_code)


_dlq_command.__name__ = _dlq_command.__qualname__ = "dlq"
DlqCommand = app.command(
    argument("action", type=str),
    argument("ids", nargs=-1, type=str),
    option("--url", default=None, metavar="URL", help="A worker's base URL (default http://127.0.0.1:<web_port>)."),
    option("--token", default=None, help="Admin token (default $ORDERSTREAM_ADMIN_TOKEN)."),
    option("--source-topic", default=None, help="Only letters from this topic (logical or Kafka name)."),
    option("--status", default=None, type=str, help="Only letters with this status: dead or redriven."),
    option("--limit", default=50, type=int, help="Letters per page for list (1-500)."),
    option("--cursor", default=None, help="List the page after this id (from a previous list)."),
    option("--all", "all_pages", is_flag=True, default=False, help="list: every page; redrive: every dead letter."),
    option("--json", "as_json", is_flag=True, default=False, help="list: print one JSON document."),
    option("--progress/--no-progress", default=True, help="Show a progress bar on redrive."),
    option("--id", "id_options", multiple=True, help="redrive: this letter (repeatable)."),
)(_dlq_command)
