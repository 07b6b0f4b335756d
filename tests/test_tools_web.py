"""web_fetch and web_search: HTML → text, the SSRF guard (before any connection), the size cap, a SearXNG-compatible
search backend, refusing to start without a provider, and web_fetch end to end through an agent."""

from __future__ import annotations

import json
import sys

import pytest
from temporalio.client import Client
from threadline.activities.web import (
    AllowList,
    WebConfigError,
    WebFetcher,
    forbidden_reason,
    select_provider,
)
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.spec import WebSettings
from threadline.models.thread import Turn

from tests.cli_helpers import run_cli
from tests.fake_openai import FakeResponse
from tests.runtime_support import items_of_turn
from tests.web_support import LocalWeb

_connects: list[tuple[str, int]] | None = None


def _audit(event: str, args: tuple) -> None:
    # Every TCP connection this process opens passes here (Python's `socket.connect` audit event).
    if event == "socket.connect" and _connects is not None and isinstance(args[1], tuple):
        _connects.append((str(args[1][0]), int(args[1][1])))


sys.addaudithook(_audit)


@pytest.fixture
def connections() -> list[tuple[str, int]]:
    """The (address, port) of every TCP connection the test opens, seen from outside the fetcher."""
    global _connects
    _connects = []
    yield _connects
    _connects = None


@pytest.fixture
def web() -> LocalWeb:
    server = LocalWeb().start()
    yield server
    server.stop()


def allowed(web: LocalWeb, **kw) -> WebFetcher:
    return WebFetcher(allow=AllowList.parse([f"127.0.0.1:{web.port}"]), **kw)


async def test_fetch_turns_html_into_readable_text(web: LocalWeb):
    text = await allowed(web).web_fetch(f"{web.base}/page")
    assert text.startswith(f"URL: {web.base}/page\nTitle: Tide tables\n")
    assert "# High tide" in text and "High tide at **Porthleven** is at 14:32." in text
    assert "Low tide: 08:10" in text and "[the tables](https://example.org/tides)" in text
    for hidden in ("do not show", "color: red", "footer text", "Home"):
        assert hidden not in text
    assert (await allowed(web).web_fetch(f"{web.base}/text")).endswith("\n\nplain words")
    missing = await allowed(web).web_fetch(f"{web.base}/nope")
    assert missing.startswith(f"error: HTTP 404 from {web.base}/nope") and "nothing here" in missing


async def test_loopback_is_refused_without_allow_and_nothing_connects(web: LocalWeb, connections):
    fetcher = WebFetcher()
    for url in (f"{web.base}/page", f"http://localhost:{web.port}/page", f"http://[::1]:{web.port}/page"):
        text = await fetcher.web_fetch(url)
        assert text.startswith("error: refused to fetch") and "loopback" in text, text
        assert "--web-fetch-allow" in text
    assert connections == [] and web.connections == 0
    # The allow entry is for this host:port only: another port on loopback stays refused.
    other = await WebFetcher(allow=AllowList.parse(["127.0.0.1:1"])).web_fetch(f"{web.base}/page")
    assert other.startswith("error: refused") and web.connections == 0


@pytest.mark.parametrize("url, reason", [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.1.1:8080/admin", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not a public address"),
])
async def test_private_and_metadata_addresses_are_refused_before_connecting(url, reason, connections):
    fetcher = WebFetcher(timeout=5)
    text = await fetcher.web_fetch(url)
    assert text.startswith("error: refused to fetch") and reason in text, text
    assert connections == []


async def test_other_schemes_and_credentials_are_refused(connections):
    fetcher = WebFetcher()
    assert (await fetcher.web_fetch("file:///etc/passwd")).startswith("error: only http and https")
    assert (await fetcher.web_fetch("ftp://example.org/x")).startswith("error: only http and https")
    assert "user name or password" in await fetcher.web_fetch("http://user:pw@example.org/")
    assert connections == []


async def test_redirect_to_loopback_is_refused(web: LocalWeb, connections):
    canary = LocalWeb().start()
    try:
        web.redirect_to = f"{canary.base}/page"
        fetcher = allowed(web)
        text = await fetcher.web_fetch(f"{web.base}/redirect")
        assert text.startswith(f"error: refused to fetch {canary.base}/page") and "loopback" in text
        assert web.requests == ["/redirect"] and canary.connections == 0
        assert connections == [("127.0.0.1", web.port)]
        # A redirect to a metadata address is refused the same way.
        web.redirect_to = "http://169.254.169.254/latest/meta-data/"
        assert "link-local" in await fetcher.web_fetch(f"{web.base}/redirect")
        # Redirects within the allowed host are followed, at most five.
        web.redirect_to = "/page"
        followed = await fetcher.web_fetch(f"{web.base}/redirect")
        assert followed.startswith(f"URL: {web.base}/page\n(redirected from {web.base}/redirect)")
        assert (await fetcher.web_fetch(f"{web.base}/loop")).startswith("error: more than 5 redirects")
    finally:
        canary.stop()


async def test_size_cap_stops_reading(web: LocalWeb):
    fetcher = allowed(web, max_bytes=64 * 1024)
    text = await fetcher.web_fetch(f"{web.base}/huge")
    assert "[the response was larger than 65536 bytes: only the first part was read]" in text
    assert text.count("x") == 64 * 1024
    capped = await allowed(web, max_chars=50).web_fetch(f"{web.base}/page")
    assert capped.endswith("characters]") and "[text truncated at 50 of" in capped


def test_guard_rules():
    import ipaddress

    assert forbidden_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert forbidden_reason(ipaddress.ip_address("2606:4700::1111")) is None
    assert forbidden_reason(ipaddress.ip_address("127.0.0.2")) == "a loopback address"
    allow = AllowList.parse(["10.0.0.0/8", "intranet.example", "db.example:5432"])
    assert allow.allows("x", 80, ipaddress.ip_address("10.1.2.3"))
    assert allow.allows("intranet.example", 8080, ipaddress.ip_address("192.168.0.1"))
    assert allow.allows("db.example", 5432, ipaddress.ip_address("192.168.0.2"))
    assert not allow.allows("db.example", 80, ipaddress.ip_address("192.168.0.2"))
    with pytest.raises(WebConfigError):
        AllowList.parse(["http://x/"])


async def test_search_through_a_searxng_compatible_server(web: LocalWeb):
    provider = select_provider(None, {"SEARXNG_URL": web.base, "TAVILY_API_KEY": "t"})
    assert provider.name == "searxng"
    results = json.loads(await provider.web_search("tides in Cornwall", count=3))
    assert results == [
        {"title": f"Result {n} for tides in Cornwall", "url": f"https://example.org/{n}",
         "snippet": f"Snippet {n} about tides in Cornwall."}
        for n in (1, 2, 3)
    ]
    assert web.search_queries == ["tides in Cornwall"]
    assert select_provider("tavily", {"SEARXNG_URL": web.base, "TAVILY_API_KEY": "t"}).name == "tavily"


def test_search_without_a_provider_refuses_to_start():
    with pytest.raises(WebConfigError, match="SEARXNG_URL.*BRAVE_API_KEY.*TAVILY_API_KEY"):
        select_provider(None, {})
    with pytest.raises(WebConfigError, match="--web-search-provider brave needs BRAVE_API_KEY"):
        select_provider("brave", {"SEARXNG_URL": "http://localhost:8888"})
    result = run_cli("process", "join", "--room", "r1", "--agent-name", "a", "--channel", "chat", "--model",
                     "offline", "--web-search",
                     env={"SEARXNG_URL": None, "BRAVE_API_KEY": None, "TAVILY_API_KEY": None})
    assert result.returncode == 2, result.stderr
    assert "--web-search has no search provider configured" in result.stderr
    assert "SEARXNG_URL" in result.stderr


async def test_agent_fetches_a_page_end_to_end(temporal_client: Client, agent_spec, agent_worker, fake_model,
                                               web: LocalWeb):
    spec = agent_spec.model_copy(update={"web": WebSettings(fetch=True, fetch_allow=[f"127.0.0.1:{web.port}"])})
    await agent_worker(spec)
    thread_id = spec.ref.thread_id(new_thread_name())
    fake_model.enqueue(
        FakeResponse.tool_calls([("web_fetch", {"url": f"{web.base}/page"}),
                                 ("web_fetch", {"url": "http://169.254.169.254/latest/meta-data/"})]),
        FakeResponse.text("High tide is at 14:32."),
    )
    reply = await submit_turn(temporal_client, spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="tides?"))
    assert reply.status == "completed" and reply.text == "High tide is at 14:32."
    assert "web_fetch" in fake_model.requests[0].tool_names
    results = [i for i in items_of_turn(spec.room, thread_id, reply.turn_id) if i.type == "tool_result"]
    by_url = {json.loads(c.arguments)["url"]: r for r in results
              for c in [next(c for c in _calls(spec.room, thread_id, reply.turn_id) if c.call_id == r.tool_call_id)]}
    page = by_url[f"{web.base}/page"]
    assert page.data["ok"] and "High tide at **Porthleven** is at 14:32." in page.text
    metadata = by_url["http://169.254.169.254/latest/meta-data/"]
    assert metadata.text.startswith("error: refused to fetch") and "link-local" in metadata.text
    tool_messages = [m["content"] for m in fake_model.requests[-1].messages if m["role"] == "tool"]
    assert any("Porthleven" in m for m in tool_messages)


def _calls(room: str, thread_id: str, turn_id: str):
    return [c for i in items_of_turn(room, thread_id, turn_id) if i.type == "assistant" for c in i.tool_calls]
