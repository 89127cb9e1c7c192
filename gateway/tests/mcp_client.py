#!/usr/bin/env python3
"""Drives NoKV's MCP server with the official Python MCP SDK (PyPI `mcp`).

cli/tests/gateway_mcp.rs publishes a small tree and runs this script against
`nokv mcp` (stdio) and `nokv gateway` (streamable HTTP at /mcp); it needs the
venv made by gateway/install-mcp-client.sh. It can also be run by hand:

    python mcp_client.py --stdio "nokv --endpoints A,B,C mcp" --expect-writes no \\
        --root /mcp-test --attr status=failed --attr-match /mcp-test/runs/r2/train.log \\
        --pattern "nan gradient" --line "ERROR: NaN gradient at step 3" \\
        --json /mcp-test/runs/r1/config.json --json-key learning_rate

What the tree under --root must hold (the test publishes exactly this):
  - exactly one file whose publish attribute KEY equals VALUE (--attr
    KEY=VALUE), at --attr-match, and other files that have KEY too;
  - exactly one line containing --pattern (case-insensitively) anywhere
    below --root, and that whole line is --line;
  - a small JSON object at --json with a top-level key --json-key.

It checks: the tool list (the seven verbs; write tools iff --expect-writes
yes; read-only hints), catalog, find with a predicate on the attribute, stat,
read (structured), grep, that every entry/match/item/hit carries a `uri`
starting with nokv://, that resources/read of a grep hit's uri returns that
exact line, that bad arguments come back as tool results with isError and the
error code in the text, and with writes: publish_text then read of it.

Exits 0 printing a one-line JSON summary, or 1 with the first failure on
stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

READ_VERBS = {"ls", "stat", "catalog", "find", "aggregate", "read", "grep"}
WRITE_TOOLS = {"publish_text", "mkdir", "snapshot_create", "snapshot_remove"}
# Whole-run deadline: a hung server fails the test instead of stalling it.
DEADLINE_SECONDS = 120


class CheckFailed(Exception):
    """One expectation that did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


class Run:
    """One session's checks, counted."""

    def __init__(self, session: ClientSession, args: argparse.Namespace) -> None:
        self.session = session
        self.args = args
        self.checks = 0
        self.uris_seen = 0

    def ok(self, condition: bool, message: str) -> None:
        check(condition, message)
        self.checks += 1

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Calls a tool that must succeed; its structured content."""
        result = await self.session.call_tool(name, arguments)
        self.ok(
            not result.is_error,
            f"{name} {json.dumps(arguments)} failed: {text_of(result)}",
        )
        data = result.structured_content
        self.ok(isinstance(data, dict), f"{name}: structured content is {data!r}")
        # The text content is the same JSON (compact).
        self.ok(
            json.loads(text_of(result)) == data,
            f"{name}: text content and structured content differ",
        )
        return data

    async def refused(self, name: str, arguments: dict[str, Any], code: str) -> str:
        """Calls a tool that must fail as a tool result with `code`."""
        try:
            result = await self.session.call_tool(name, arguments)
        except MCPError as e:
            raise CheckFailed(
                f"{name} {json.dumps(arguments)} raised a protocol error ({e}); "
                f"expected a tool result with isError and code {code}"
            ) from e
        text = text_of(result)
        self.ok(result.is_error, f"{name} {json.dumps(arguments)} should fail, got: {text[:300]}")
        self.ok(
            text.startswith(f"{code}: "),
            f"{name} {json.dumps(arguments)}: expected '{code}: ...', got: {text[:300]}",
        )
        return text

    def uris(self, what: str, items: list[dict[str, Any]]) -> None:
        """Every item carries an evidence uri."""
        for item in items:
            uri = item.get("uri")
            self.ok(
                isinstance(uri, str) and uri.startswith("nokv://"),
                f"{what}: item without a nokv:// uri: {json.dumps(item)[:300]}",
            )
            self.uris_seen += 1

    # ----- the checks -----

    async def tools(self) -> list[str]:
        listed = await self.session.list_tools()
        names = {tool.name for tool in listed.tools}
        missing = READ_VERBS - names
        self.ok(not missing, f"tools/list lacks the verbs {sorted(missing)}; has {sorted(names)}")
        writes = names & WRITE_TOOLS
        if self.args.expect_writes:
            self.ok(writes == WRITE_TOOLS, f"write tools expected, listed: {sorted(names)}")
        else:
            self.ok(not writes, f"no write tools expected, listed: {sorted(writes)}")
        for tool in listed.tools:
            schema = tool.input_schema
            self.ok(schema.get("type") == "object", f"{tool.name}: input schema {schema}")
            hints = tool.annotations
            self.ok(hints is not None, f"{tool.name}: no annotations")
            self.ok(
                hints.read_only_hint == (tool.name in READ_VERBS),
                f"{tool.name}: readOnlyHint is {hints.read_only_hint}",
            )
        return sorted(names)

    async def catalog(self) -> None:
        key = self.args.attr_key
        data = await self.call("catalog", {"path": self.args.root})
        fields = {f for by_type in data["fields"].values() for f in by_type}
        self.ok(key in fields, f"catalog of {self.args.root} lacks field {key!r}: {sorted(fields)}")
        self.ok("size_bytes" in data["builtins"], f"catalog lacks the built-in size_bytes: {data['builtins']}")

    async def find(self) -> None:
        a = self.args
        predicate = {"field": a.attr_key, "op": "eq", "value": a.attr_value}
        data = await self.call(
            "find",
            {"path": a.root, "predicates": [predicate], "fields": [a.attr_key], "limit": 10},
        )
        matches = data["matches"]
        self.uris(f"find {predicate}", matches)
        paths = [m["path"] for m in matches]
        self.ok(paths == [a.attr_match], f"find {predicate}: expected [{a.attr_match}], got {paths}")
        self.ok(data["match_count"] == 1, f"find: match_count {data['match_count']}")
        # The opposite predicate finds the others, and pages are bounded.
        others = await self.call(
            "find",
            {
                "path": a.root,
                "predicates": [{"field": a.attr_key, "op": "ne", "value": a.attr_value}],
                "limit": 1,
            },
        )
        self.uris("find ne", others["matches"])
        self.ok(len(others["matches"]) == 1, f"find limit 1 returned {len(others['matches'])}")
        if others["match_count"] > 1:
            self.ok(bool(others["next_cursor"]), "find: more matches but no next_cursor")
            page2 = await self.call(
                "find",
                {
                    "path": a.root,
                    "predicates": [{"field": a.attr_key, "op": "ne", "value": a.attr_value}],
                    "limit": 1,
                    "cursor": others["next_cursor"],
                },
            )
            self.uris("find page 2", page2["matches"])
            self.ok(
                page2["matches"][0]["path"] != others["matches"][0]["path"],
                "find: page 2 repeats page 1",
            )

    async def ls_and_stat(self) -> None:
        a = self.args
        listing = await self.call("ls", {"path": a.root})
        self.uris(f"ls {a.root}", listing["entries"])
        self.ok(listing["entries"], f"ls {a.root} is empty")
        card = (await self.call("stat", {"path": a.attr_match}))["card"]
        self.uris(f"stat {a.attr_match}", [card])
        self.ok(card["kind"] == "file", f"stat: kind {card['kind']}")
        attrs = card.get("attrs", {})
        self.ok(
            str(attrs.get(a.attr_key)) == a.attr_value,
            f"stat {a.attr_match}: attrs {attrs}, expected {a.attr_key}={a.attr_value}",
        )

    async def read(self) -> None:
        a = self.args
        data = await self.call("read", {"path": a.json})
        self.ok(data["format"] == "structured", f"read {a.json}: format {data['format']}")
        items = data["items"]
        self.ok(bool(items), f"read {a.json}: no records")
        self.uris(f"read {a.json}", items)
        self.ok(
            a.json_key in json.dumps(items),
            f"read {a.json}: key {a.json_key!r} not in {json.dumps(items)[:300]}",
        )
        # An item's uri resolves through read {uri}.
        cited = await self.call("read", {"uri": items[0]["uri"]})
        self.ok(cited["path"] == a.json, f"read uri: path {cited['path']}")

    async def grep(self) -> str:
        """Greps --pattern below --root; the single hit's uri."""
        a = self.args
        data = await self.call("grep", {"path": a.root, "pattern": a.pattern, "recursive": True})
        hits = data["matches"]
        self.uris(f"grep {a.pattern!r}", hits)
        self.ok(len(hits) == 1, f"grep {a.pattern!r}: expected one hit, got {json.dumps(hits)[:500]}")
        hit = hits[0]
        self.ok(a.pattern.lower() in hit["snippet"].lower(), f"grep snippet {hit['snippet']!r}")
        return hit["uri"]

    async def resources(self, hit_uri: str) -> None:
        a = self.args
        templates = await self.session.list_resource_templates()
        forms = [t.uri_template for t in templates.resource_templates]
        self.ok("nokv://{+path}" in forms, f"resource templates: {forms}")
        read = await self.session.read_resource(hit_uri)
        self.ok(len(read.contents) == 1, f"resources/read {hit_uri}: {len(read.contents)} contents")
        text = getattr(read.contents[0], "text", None)
        self.ok(text is not None, f"resources/read {hit_uri}: not text: {read.contents[0]!r}")
        line = text.rstrip("\r\n")
        self.ok(line == a.line, f"resources/read {hit_uri}: {line!r}, expected {a.line!r}")
        self.ok(a.pattern.lower() in line.lower(), f"cited line {line!r} lacks {a.pattern!r}")
        # The read tool resolves the same uri to the same bytes.
        via_tool = await self.call("read", {"uri": hit_uri})
        self.ok(
            via_tool.get("text", "").rstrip("\r\n") == a.line,
            f"read {{uri: {hit_uri}}}: {via_tool.get('text')!r}",
        )
        # A uri citing nothing is an MCP error, not a crash.
        missing = f"nokv:/{a.root.rstrip('/')}/no-such-file-{id(self)}.txt#L1"
        try:
            await self.session.read_resource(missing)
        except MCPError as e:
            self.ok("not_found" in str(e), f"resources/read {missing}: error {e}")
        else:
            raise CheckFailed(f"resources/read {missing} should fail")

    async def refusals(self) -> None:
        a = self.args
        await self.refused("find", {"path": a.root, "no_such_argument": 1}, "unknown_field")
        await self.refused("find", {"path": a.root, "limit": 0}, "invalid_argument")
        await self.refused(
            "find",
            {"path": a.root, "predicates": [{"field": "no_such_field_q7", "op": "exists"}]},
            "unknown_field",
        )
        await self.refused("no_such_tool", {}, "unknown_verb")
        if not a.expect_writes:
            await self.refused(
                "publish_text", {"path": f"{a.root}/refused.txt", "text": "x"}, "writes_disabled"
            )

    async def writes(self) -> None:
        a = self.args
        path = f"{a.root.rstrip('/')}/agent/notes.txt"
        text = "first line\nthe agent was here\n"
        published = await self.call(
            "publish_text", {"path": path, "text": text, "attrs": {"author": "mcp-test"}}
        )
        self.uris("publish_text", [published])
        data = await self.call("read", {"path": path})
        self.uris(f"read {path}", data["items"])
        self.ok(
            "the agent was here" in json.dumps(data["items"]),
            f"read {path}: {json.dumps(data['items'])[:300]}",
        )
        # Publishing again without replace is refused as a tool error.
        again = await self.session.call_tool("publish_text", {"path": path, "text": "x"})
        self.ok(again.is_error, f"publish_text over an existing file: {text_of(again)}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        if args.stdio:
            argv = shlex.split(args.stdio)
            params = StdioServerParameters(command=argv[0], args=argv[1:])
            streams = await stack.enter_async_context(stdio_client(params))
            transport = "stdio"
        else:
            streams = await stack.enter_async_context(streamable_http_client(args.http))
            transport = "http"
        # Some SDK versions yield a third value (a session-id getter).
        read_stream, write_stream = streams[0], streams[1]
        session = await stack.enter_async_context(ClientSession(read_stream, write_stream))
        init = await session.initialize()
        check(init.server_info.name == "nokv", f"server name {init.server_info.name!r}")
        check(bool(init.instructions), "initialize carries no instructions")
        check(init.capabilities.tools is not None, "no tools capability")
        check(init.capabilities.resources is not None, "no resources capability")

        r = Run(session, args)
        tools = await r.tools()
        await r.catalog()
        await r.find()
        await r.ls_and_stat()
        await r.read()
        hit_uri = await r.grep()
        await r.resources(hit_uri)
        await r.refusals()
        if args.expect_writes:
            await r.writes()
        return {
            "ok": True,
            "transport": transport,
            "protocol_version": str(init.protocol_version),
            "server": f"{init.server_info.name} {init.server_info.version}",
            "tools": len(tools),
            "writes": args.expect_writes,
            "checks": r.checks,
            "uris_checked": r.uris_seen,
        }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--stdio", help="command line of a stdio MCP server")
    target.add_argument("--http", help="URL of a streamable HTTP MCP endpoint")
    p.add_argument("--expect-writes", choices=["yes", "no"], required=True)
    p.add_argument("--root", required=True, help="directory the test published")
    p.add_argument("--attr", required=True, help="KEY=VALUE held by exactly one file")
    p.add_argument("--attr-match", required=True, help="path of that file")
    p.add_argument("--pattern", required=True, help="grep pattern with exactly one hit")
    p.add_argument("--line", required=True, help="the whole line that hit is on")
    p.add_argument("--json", required=True, help="path of a small JSON object")
    p.add_argument("--json-key", required=True, help="a top-level key of it")
    args = p.parse_args()
    args.expect_writes = args.expect_writes == "yes"
    if "=" not in args.attr:
        p.error("--attr must be KEY=VALUE")
    args.attr_key, args.attr_value = args.attr.split("=", 1)
    return args


async def run_with_deadline(args: argparse.Namespace) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE_SECONDS):
        return await run(args)


def first_cause(e: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap failures)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def main() -> int:
    args = parse_args()
    try:
        summary = anyio.run(run_with_deadline, args)
    except Exception as group:  # noqa: BLE001 -- every failure fails the run
        e = first_cause(group)
        if isinstance(e, CheckFailed):
            reason = str(e)
        elif isinstance(e, TimeoutError):
            reason = f"no result within {DEADLINE_SECONDS} s"
        else:
            reason = f"{type(e).__name__}: {e}"
        print(f"mcp_client.py: FAILED ({'stdio' if args.stdio else 'http'}): {reason}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
