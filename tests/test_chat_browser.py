"""The web chat page end to end in real headless Chromium (Debian's `chromium`, driven by Playwright): sign in with
?token=, start a thread, watch a streamed reply, use tools, switch threads, queue a message while a turn runs, stop
a long turn, and take screenshots (desktop and phone) into the test's folder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.chat_http_support import chat_server
from tests.fake_openai import FakeOpenAI, FakeResponse

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser tests need Chromium at /usr/bin/chromium: install it with "
           "`sudo apt-get install -y chromium` (Debian/Ubuntu), then run the tests again",
)

REPLY = "Here is *Markdown*, with `code`:\n\n- first point\n- second point\n\n```\nprint('hi')\n```"


@pytest.fixture
async def browser():
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (the test extra)")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser
        await browser.close()


async def test_chat_page_end_to_end(temporal_client: Client, agent_spec, fake_model: FakeOpenAI, browser,
                                    tmp_path: Path):
    release = threading.Event()
    async with chat_server(temporal_client, agent_spec, token="page-token") as server:
        page = await browser.new_page(viewport={"width": 1280, "height": 820})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(server.url + "/?token=page-token")
        await page.wait_for_function("document.getElementById('agent-name').textContent === 'support'")
        assert "token" not in page.url  # moved to localStorage

        # A streamed reply, rendered as Markdown.
        fake_model.enqueue(FakeResponse.text(REPLY, chunk_delay=0.06))
        await page.fill("#input", "Hello **agent**")
        await page.press("#input", "Enter")
        await page.wait_for_selector(".msg.assistant.live:not(.waiting) .md", timeout=20000)
        partial = await page.inner_text(".msg.assistant.live .md")
        assert partial and "second point" not in partial, "the reply should appear while it is written"
        await page.wait_for_selector(".msg.assistant:not(.live) .md li >> text=second point", timeout=20000)
        assert await page.inner_html(".msg.user .bubble") == "<p>Hello <strong>agent</strong></p>"
        assert await page.locator(".msg.assistant em", has_text="Markdown").count() == 1
        assert await page.locator(".msg.assistant pre.code").count() == 1

        # Tools show as collapsible lines.
        await page.fill("#input", "CALL_TOOL current_time {}")
        await page.press("#input", "Enter")
        await page.wait_for_selector(".tool .tool-state.ok", timeout=20000)
        await page.wait_for_selector(".msg.assistant .md >> text=tools done:", timeout=20000)
        await page.click(".tool summary")
        assert await page.locator(".tool[open] .tool-output").inner_text() != "running…"
        link = await page.get_attribute("#temporal-link", "href")
        assert link.startswith("http://localhost:8233/namespaces/default/workflows/" + agent_spec.room + "%2F")
        await page.wait_for_function("document.querySelectorAll('.thread').length === 1")
        await page.screenshot(path=str(tmp_path / "chat-desktop.png"))

        # A second thread, then back to the first.
        await page.click("#new-thread")
        assert await page.locator(".msg").count() == 0
        await page.fill("#input", "second thread")
        await page.press("#input", "Enter")
        await page.wait_for_selector(".msg.assistant .md >> text=echo: second thread", timeout=20000)
        await page.wait_for_function("document.querySelectorAll('.thread').length === 2")
        await page.click(".thread:not(.active) .thread-open")
        await page.wait_for_selector(".msg.assistant li >> text=first point", timeout=20000)
        assert await page.locator(".msg.assistant .md >> text=echo: second thread").count() == 0

        # A long turn: a message typed meanwhile is queued, Stop interrupts, the queued one runs next.
        fake_model.enqueue(FakeResponse.block(release, then=FakeResponse.text("too late"), timeout=60))
        await page.fill("#input", "take your time")
        await page.press("#input", "Enter")
        await page.wait_for_selector("#stop:not([hidden])", timeout=20000)
        assert await page.is_visible("#mode")
        await page.fill("#input", "and then this")
        await page.press("#input", "Enter")
        await page.wait_for_selector(".msg.pending .msg-label >> text=queued", timeout=5000)
        await page.screenshot(path=str(tmp_path / "chat-running.png"))
        await page.click("#stop")
        await page.wait_for_selector(".note >> text=turn cancelled", timeout=20000)
        await page.wait_for_selector(".msg.assistant .md >> text=echo: and then this", timeout=20000)
        await page.wait_for_selector("#stop[hidden]", state="attached", timeout=20000)
        assert await page.locator(".msg.assistant .md >> text=too late").count() == 0

        # A phone: the sidebar is a drawer behind the menu button.
        phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        await phone.goto(server.url + "/?token=page-token")
        await phone.wait_for_selector(".thread", timeout=20000)
        assert not await phone.locator(".thread-open").first.is_visible() or await phone.evaluate(
            "document.getElementById('sidebar').getBoundingClientRect().right <= 0")
        await phone.click("#menu")
        await phone.wait_for_timeout(300)
        await phone.screenshot(path=str(tmp_path / "chat-phone-threads.png"))
        await phone.locator(".thread-open").first.click()
        await phone.wait_for_selector(".msg.assistant", timeout=20000)
        await phone.wait_for_timeout(300)
        await phone.screenshot(path=str(tmp_path / "chat-phone.png"))
        release.set()
        assert errors == []


async def test_the_page_asks_for_a_token(temporal_client: Client, agent_spec, browser):
    async with chat_server(temporal_client, agent_spec, token="right") as server:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.wait_for_selector("#login:not([hidden])")
        await page.fill("#token-input", "wrong")
        await page.press("#token-input", "Enter")
        await page.wait_for_selector("#login-error >> text=not accepted")
        await page.fill("#token-input", "right")
        await page.press("#token-input", "Enter")
        await page.wait_for_function("document.getElementById('agent-name').textContent === 'support'")
        assert await page.is_hidden("#login")


async def test_a_compacted_thread_shows_its_summary(temporal_client: Client, agent_spec, fake_model: FakeOpenAI,
                                                   browser):
    from threadline.models.spec import ContextSettings

    from tests.test_compaction import FILLER, summarising_model

    spec = agent_spec.model_copy(update={"context": ContextSettings(window=2000, threshold=600)})
    fake_model.script(summarising_model)
    fake_model.chars_per_token = 3
    async with chat_server(temporal_client, spec) as server:
        page = await browser.new_page(viewport={"width": 1280, "height": 820})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(server.url + "/")
        for n, text in enumerate(["FACT: the parcel is blue. " + FILLER * 5, "and now? " + FILLER * 5], 1):
            await page.fill("#input", text)
            await page.press("#input", "Enter")
            await page.wait_for_function(f"document.querySelectorAll('.msg.assistant:not(.live)').length === {n}",
                                         timeout=20000)
        note = page.locator(".summary-note")
        await note.locator("summary >> text=Earlier messages summarised (items 1–2)").wait_for(timeout=20000)
        await note.locator("summary").click()
        assert "FACT: the parcel is blue" in await note.locator(".summary-text").inner_text()
        assert await page.locator(".msg.user").count() == 2  # the summarised messages stay on the page
        assert errors == []


async def test_a_tool_call_is_approved_and_another_denied_on_the_page(temporal_client: Client, agent_spec,
                                                                      fake_model: FakeOpenAI, browser):
    from tests.test_approvals import TOOLS, tools_done
    from tests.tools_for_tests import ledger_lines

    spec = agent_spec.model_copy(update={"tools": TOOLS})
    fake_model.script(tools_done)
    fake_model.enqueue(FakeResponse.tool_calls([("append_line", {"line": "from the page"})]),
                       FakeResponse.text("first done"),
                       FakeResponse.tool_calls([("append_line", {"line": "never"})]))
    async with chat_server(temporal_client, spec) as server:
        page = await browser.new_page(viewport={"width": 1280, "height": 820})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(server.url + "/")
        await page.fill("#input", "append it")
        await page.press("#input", "Enter")
        card = page.locator(".approval-card").first
        await card.locator("text=Approval needed: append_line").wait_for(timeout=20000)
        assert "from the page" in await card.locator(".approval-args").inner_text()
        await card.locator("button.approve").click()
        await card.locator(".approval-verdict >> text=approved by web user (web)").wait_for(timeout=20000)
        await page.wait_for_selector(".msg.assistant .md >> text=first done", timeout=20000)
        assert [line.split(" ", 1)[1] for line in ledger_lines()] == ["from the page"]

        await page.fill("#input", "again")
        await page.press("#input", "Enter")
        second = page.locator(".approval-card").nth(1)
        await second.locator("button.deny").wait_for(timeout=20000)
        await second.locator(".approval-reason").fill("once is enough")
        await second.locator("button.deny").click()
        await page.wait_for_selector(".msg.assistant .md >> text=tools done: denied by web user: once is enough",
                                     timeout=20000)
        assert await second.locator(".approval-actions").count() == 0
        assert len(ledger_lines()) == 1
        assert errors == []
