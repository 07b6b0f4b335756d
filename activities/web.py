"""Web tools: `web_fetch` (`--web-fetch`) and `web_search` (`--web-search`).

web_fetch. Fetches an http(s) URL and answers with readable text: HTML becomes Markdown-ish text (markdownify, with
scripts, styles and page chrome dropped), PDFs their extracted text (pypdf), text and JSON as they are. The text is
cut at `max_chars` with a note; `run_tool` saves output over 16 KiB to room storage and keeps a preview.

Safety (SSRF). Before any connection, the URL's host is resolved and every address it resolves to must be public:
loopback, private (RFC 1918, CGNAT), link-local (169.254/16: cloud metadata), unique-local (fc00::/7), multicast,
reserved and unspecified addresses are refused, as are IPv4-mapped/NAT64 forms of them, unless `--web-fetch-allow`
names the host, host:port or a CIDR containing the address. The connection then goes to the address that was
checked (a network backend pinned to it), so a DNS answer that changes between the check and the connect (DNS
rebinding) cannot redirect it; TLS still verifies the certificate for the URL's host name (SNI). Redirects are
followed by hand, at most `MAX_REDIRECTS`, each one checked the same way. The body is read as a stream and reading
stops at `max_bytes`; the whole fetch has a timeout. Proxies from the environment are not used (they would bypass
the check). A refused or failed fetch answers the model with a line starting `error:`.

web_search. Calls a configured search backend with httpx: SearXNG's JSON API (`SEARXNG_URL`), Brave Search
(`BRAVE_API_KEY`) or Tavily (`TAVILY_API_KEY`); `--web-search-provider` picks one, the default is the first that is
configured in that order. The provider's URL is the operator's, so the SSRF guard does not apply to it. OpenAI's
hosted `web_search` tool exists only in the Responses API; Threadline calls Chat Completions, so it is not used.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from threadline.activities.tools import Tool, ToolLoadError

MAX_REDIRECTS = 5
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_CHARS = 100_000
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "Threadline-web-fetch/0.1 (+https://github.com/threadline)"
SEARCH_PROVIDERS = ("searxng", "brave", "tavily")
BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
TAVILY_URL = "https://api.tavily.com/search"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebConfigError(ToolLoadError):
    """A web tool option that cannot work (no search provider, a bad --web-fetch-allow entry)."""


class FetchRefused(Exception):
    """A URL the guard does not let the agent fetch; the message says why."""


# The guard.


@dataclass(frozen=True)
class AllowList:
    """`--web-fetch-allow` entries: a host name (any port), host:port, an IP, or a CIDR."""

    hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AllowList:
        hosts, host_ports, networks = set(), set(), []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = entry.rpartition(":")
            if sep and port.isdigit() and host and not host.endswith(":"):
                if not 0 < int(port) < 65536:
                    raise WebConfigError(f"--web-fetch-allow {raw!r}: port {port} is out of range")
                host_ports.add((host.strip("[]"), int(port)))
            elif entry.replace(".", "").replace("-", "").replace("_", "").isalnum():
                hosts.add(entry)
            else:
                raise WebConfigError(f"--web-fetch-allow {raw!r}: use a host, host:port or CIDR (e.g. 10.0.0.0/8)")
        return cls(frozenset(hosts), frozenset(host_ports), tuple(networks))

    def allows(self, host: str, port: int, ip: IpAddress) -> bool:
        host = host.lower().strip("[]")
        return (
            host in self.hosts or (host, port) in self.host_ports or str(ip) in self.hosts
            or (str(ip), port) in self.host_ports or any(ip in net for net in self.networks)
        )


def forbidden_reason(ip: IpAddress) -> str | None:
    """Why an address is not public, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is None and ip in ipaddress.ip_network("64:ff9b::/96"):
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if mapped is not None:
            reason = forbidden_reason(mapped)
            return f"{reason} (as {ip})" if reason else None
    for attribute, what in (
        ("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"), ("is_unspecified", "an unspecified address"),
        ("is_reserved", "a reserved address"), ("is_private", "a private address"),
    ):
        if getattr(ip, attribute):
            return what
    if not ip.is_global:
        return "not a public address"
    return None


async def resolve(host: str, port: int) -> list[IpAddress]:
    """The addresses a host resolves to (an IP literal is its own answer)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchRefused(f"cannot resolve host {host!r}: {e.strerror}") from e
    found: list[IpAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise FetchRefused(f"host {host!r} has no addresses")
    return found


async def check_url(url: str, allow: AllowList) -> tuple[str, int, IpAddress]:
    """Host, port and the one address to connect to; FetchRefused when the URL may not be fetched."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise FetchRefused(f"{url!r} is not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs can be fetched, not {parts.scheme or 'a URL without scheme'!r}")
    host = parts.hostname
    if not host:
        raise FetchRefused(f"{url!r} has no host")
    if parts.username or parts.password:
        raise FetchRefused("URLs with a user name or password are not fetched")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port)
    for ip in addresses:
        if allow.allows(host, port, ip):
            continue
        reason = forbidden_reason(ip)
        if reason:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise FetchRefused(
                f"refused to fetch {url}: {shown} is {reason}; the operator can allow it with --web-fetch-allow"
            )
    return host, port, addresses[0]


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the address the guard checked, whatever the name resolves to now; anything else is refused."""

    def __init__(self, host: str, port: int, ip: IpAddress) -> None:
        self.host, self.port, self.ip = host.lower(), port, ip
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        if (host.lower().strip("[]"), port) != (self.host.strip("[]"), self.port):
            raise httpcore.ConnectError(f"connection to {host}:{port} was not checked")
        return await self.inner.connect_tcp(str(self.ip), port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: PinnedBackend) -> None:
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to pass a network backend; this is the same pool with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=backend, max_connections=1,
        )


# Fetching.


@dataclass
class FetchedPage:
    url: str
    status: int
    content_type: str
    body: bytes
    truncated: bool
    redirects: list[str] = field(default_factory=list)


@dataclass
class WebFetcher:
    allow: AllowList = field(default_factory=AllowList)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_chars: int = DEFAULT_MAX_CHARS
    timeout: float = DEFAULT_TIMEOUT

    async def fetch(self, url: str) -> FetchedPage:
        deadline = time.monotonic() + self.timeout
        redirects: list[str] = []
        current = url.strip()
        while True:
            host, port, ip = await check_url(current, self.allow)
            backend = PinnedBackend(host, port, ip)
            remaining = max(0.1, deadline - time.monotonic())
            async with httpx.AsyncClient(transport=PinnedTransport(backend), follow_redirects=False,
                                         timeout=httpx.Timeout(remaining), trust_env=False,
                                         headers={"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,"
                                                  "application/pdf,text/plain,application/json;q=0.9,*/*;q=0.5"}) as client:
                async with client.stream("GET", current) as response:
                    if response.is_redirect and "location" in response.headers:
                        if len(redirects) >= MAX_REDIRECTS:
                            raise FetchRefused(f"more than {MAX_REDIRECTS} redirects (last to {current})")
                        redirects.append(current)
                        current = urljoin(current, response.headers["location"])
                        continue
                    body, truncated = await _read_capped(response, self.max_bytes, deadline)
                    return FetchedPage(
                        url=current, status=response.status_code,
                        content_type=response.headers.get("content-type", ""), body=body, truncated=truncated,
                        redirects=redirects,
                    )

    async def web_fetch(self, url: str) -> str:
        """Fetch a web page (http/https) and return its readable text (HTML as Markdown, PDF as text)."""
        try:
            page = await asyncio.wait_for(self.fetch(url), self.timeout + 1)
        except FetchRefused as e:
            return f"error: {e}"
        except (TimeoutError, httpx.TimeoutException):
            return f"error: fetching {url} timed out after {self.timeout:g} s"
        if page.status >= 500 or page.status == 429:
            # Worth a retry: the activity's retry policy runs it again, the last error goes to the model.
            raise RuntimeError(f"HTTP {page.status} from {page.url}")
        text, title = extract_text(page)
        header = [f"URL: {page.url}"]
        if page.redirects:
            header.append(f"(redirected from {page.redirects[0]})")
        if title:
            header.append(f"Title: {title}")
        if page.status >= 400:
            header.insert(0, f"error: HTTP {page.status} from {page.url}")
        if page.truncated:
            header.append(f"[the response was larger than {self.max_bytes} bytes: only the first part was read]")
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n\n[text truncated at {self.max_chars} of {len(text)} characters]"
        return "\n".join(header) + "\n\n" + text

    def tool(self) -> Tool:
        return Tool(
            "web_fetch",
            "Fetch a web page or document by URL (http/https) and return its readable text (HTML as Markdown, "
            "PDF as text). Private and local addresses are refused.",
            self.web_fetch,
            timeout_seconds=self.timeout + 15,
            max_attempts=2,
        )


async def _read_capped(response: httpx.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
    """The (decoded) body up to `cap` bytes; reading stops there, so a huge or endless body costs at most that."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
        if time.monotonic() > deadline:
            raise TimeoutError
    return b"".join(chunks), False


def extract_text(page: FetchedPage) -> tuple[str, str | None]:
    """The page's readable text and title."""
    kind = page.content_type.split(";")[0].strip().lower()
    body = page.body
    if kind == "application/pdf" or body.startswith(b"%PDF-"):
        return _pdf_text(body, page.truncated), None
    charset = _charset(page.content_type)
    text = body.decode(charset or "utf-8", errors="replace")
    if kind in ("text/html", "application/xhtml+xml") or (not kind and text.lstrip()[:15].lower().startswith(
            ("<!doctype html", "<html"))):
        return html_to_text(text)
    if kind.startswith("text/") or kind in ("application/json", "application/xml") or kind.endswith(("+json", "+xml")):
        return text, None
    return f"[{kind or 'unknown'} content ({len(body)} bytes) cannot be shown as text]", None


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            try:
                "".encode(value.strip('"'))
                return value.strip('"')
            except LookupError:
                return None
    return None


def html_to_text(html: str) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "svg", "iframe", "head", "nav", "footer", "form"]):
        tag.decompose()
    main = soup.find("main") or soup.find("article") or soup.body or soup
    text = MarkdownConverter(heading_style="ATX", strip=["img"]).convert_soup(main)
    lines = [line.rstrip() for line in text.splitlines()]
    compact: list[str] = []
    for line in lines:
        if line or (compact and compact[-1]):
            compact.append(line)
    return "\n".join(compact).strip(), title or None


def _pdf_text(body: bytes, truncated: bool) -> str:
    if truncated:
        return "[the PDF is larger than the size limit, so its text cannot be extracted]"
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # pypdf raises many kinds on broken files
        return f"[the PDF's text cannot be extracted: {e}]"
    return "\n\n".join(f"--- page {n} ---\n{text.strip()}" for n, text in enumerate(pages, 1))


# Searching.


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


@dataclass
class SearchProvider:
    name: str
    env: Mapping[str, str]
    timeout: float = 20.0

    async def search(self, query: str, count: int) -> list[SearchResult]:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=True) as client:
            if self.name == "searxng":
                base = self.env["SEARXNG_URL"].rstrip("/")
                response = await client.get(f"{base}/search", params={"q": query, "format": "json"})
                response.raise_for_status()
                items = response.json().get("results", [])
                return [SearchResult(i.get("title", ""), i.get("url", ""), i.get("content", "")) for i in items][:count]
            if self.name == "brave":
                response = await client.get(
                    BRAVE_URL, params={"q": query, "count": count},
                    headers={"X-Subscription-Token": self.env["BRAVE_API_KEY"], "Accept": "application/json"},
                )
                response.raise_for_status()
                items = (response.json().get("web") or {}).get("results", [])
                return [SearchResult(i.get("title", ""), i.get("url", ""), i.get("description", "")) for i in items][
                    :count]
            response = await client.post(
                TAVILY_URL, json={"query": query, "max_results": count},
                headers={"Authorization": f"Bearer {self.env['TAVILY_API_KEY']}"},
            )
            response.raise_for_status()
            items = response.json().get("results", [])
            return [SearchResult(i.get("title", ""), i.get("url", ""), i.get("content", "")) for i in items][:count]

    async def web_search(self, query: str, count: int = 5) -> str:
        """Search the web; returns results as title, URL and snippet."""
        count = max(1, min(int(count), 20))
        try:
            results = await self.search(query, count)
        except httpx.HTTPStatusError as e:
            status = e.response.status_code
            if status in (401, 403):
                return f"error: the {self.name} search provider refused the request (HTTP {status}): check its key"
            raise RuntimeError(f"{self.name} search failed: HTTP {status}") from e
        except (httpx.HTTPError, ValueError) as e:
            raise RuntimeError(f"{self.name} search failed: {e.__class__.__name__}: {e}") from e
        if not results:
            return f"no results for {query!r}"
        return json.dumps(
            [{"title": r.title, "url": r.url, "snippet": " ".join(r.snippet.split())} for r in results],
            ensure_ascii=False, indent=1,
        )

    def tool(self) -> Tool:
        return Tool(
            "web_search",
            f"Search the web ({self.name}). Returns a JSON list of results with title, url and snippet; cite the "
            "URLs you use. `count`: how many results (1-20).",
            self.web_search,
            timeout_seconds=self.timeout + 10,
            max_attempts=3,
        )


_PROVIDER_ENV = {"searxng": "SEARXNG_URL", "brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY"}
HOW_TO_CONFIGURE = (
    "set SEARXNG_URL (a SearXNG instance with the JSON format enabled), BRAVE_API_KEY (Brave Search API) or "
    "TAVILY_API_KEY (Tavily), optionally with --web-search-provider searxng|brave|tavily"
)


def select_provider(requested: str | None, env: Mapping[str, str]) -> SearchProvider:
    """The search provider `--web-search` uses; WebConfigError says how to configure one."""
    if requested:
        name = requested.strip().lower()
        if name not in _PROVIDER_ENV:
            raise WebConfigError(f"--web-search-provider {requested!r}: use one of {', '.join(SEARCH_PROVIDERS)}")
        variable = _PROVIDER_ENV[name]
        if not env.get(variable, "").strip():
            raise WebConfigError(f"--web-search-provider {name} needs {variable} in the environment")
        if name == "searxng":
            _check_searxng_url(env[variable])
        return SearchProvider(name, dict(env))
    for name, variable in _PROVIDER_ENV.items():
        if env.get(variable, "").strip():
            if name == "searxng":
                _check_searxng_url(env[variable])
            return SearchProvider(name, dict(env))
    raise WebConfigError(f"--web-search has no search provider configured: {HOW_TO_CONFIGURE}")


def _check_searxng_url(url: str) -> None:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WebConfigError(f"SEARXNG_URL {url!r} is not an http(s) URL, e.g. http://localhost:8888")


def web_tools(web: Any, env: Mapping[str, str]) -> list[Tool]:
    """The tools `--web-fetch` and `--web-search` give an agent (`web` is the spec's WebSettings)."""
    tools: list[Tool] = []
    if web.fetch:
        tools.append(WebFetcher(allow=AllowList.parse(web.fetch_allow), max_bytes=web.fetch_max_bytes,
                                timeout=web.fetch_timeout).tool())
    if web.search:
        tools.append(select_provider(web.search_provider, env).tool())
    return tools
