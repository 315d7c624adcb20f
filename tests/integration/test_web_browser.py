"""The web page in a real headless Chromium (the distribution's, driven by Playwright), on a real bridge
with the sim engine: pair a number from the page, read the QR off the page as a phone would and scan it
through the sim, watch the card turn connected without a reload, disconnect and connect with its buttons,
send a test message, see an outage's error and next retry, and remove the account after confirming.

`WEB_SCREENSHOT=docs/web-page.png` saves the page's screenshot there (the one in the README).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from harness import BridgeEnv, BridgeProcess, Probe, free_port, wait_port

playwright = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright (pip)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="the browser tests need chromium (apt)")

A = "5511900000001"  # paired from the page
B = "5511900000002"  # already linked: connected at start
ANA = "5511988887777"
TIMEOUT = 15_000  # ms, for the page to show what the bridge pushed


def read_qr(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1, f"{len(found)} QR codes found on the page's image"
    return found[0].text


async def test_pair_by_the_qr_on_the_page_then_disconnect_connect_send_and_remove(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    expect = playwright.expect
    port = free_port()
    env.write_config(web={"enabled": True, "port": port})
    env.link_sim_account(B, "Kitchen tablet")
    bridge.start()
    await asyncio.to_thread(wait_port, port, 20)
    async with Probe(env.broker, env.base) as probe, playwright.async_playwright() as driver:
        await probe.wait_state(B, "connected")
        await probe.sim(B, "incoming", {"text": "hello", "sender": ANA})
        await probe.wait_for(f"{env.base}/{B}/message")
        browser = await driver.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            refused: list[int] = []  # answers the page showed as refusals (it logs them as failed loads too)
            page.on("response", lambda response: refused.append(response.status) if response.status >= 400 else None)
            await page.goto(f"http://127.0.0.1:{port}/")
            await expect(page.locator("#live")).to_have_class("live on", timeout=TIMEOUT)
            kitchen = page.locator(f'.card[data-phone="{B}"]')
            await expect(kitchen).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
            await expect(kitchen.locator('dd[data-key="messages_in"]')).to_have_text("1", timeout=TIMEOUT)
            await page.evaluate("window.sameDocument = true")  # gone if the page reloads

            # pair a new number from the page: its QR appears on the new card
            await page.fill("#pair-phone", "+" + A)
            await page.select_option("#pair-method", "qr")
            await page.click("#pair-button")
            card = page.locator(f'.card[data-phone="{A}"]')
            await expect(card).to_have_attribute("data-state", "pairing", timeout=TIMEOUT)
            qr = card.locator("img.qr")
            await expect(qr).to_be_visible(timeout=TIMEOUT)
            await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=await qr.element_handle(),
                                         timeout=TIMEOUT)
            code = read_qr(await qr.screenshot())  # what a phone's camera reads off the screen
            retained = await probe.wait_for(f"{env.base}/{A}/qr", lambda r: bool(r.payload))
            assert code == retained.payload.decode()
            if target := os.environ.get("WEB_SCREENSHOT"):
                await expect(page.locator("#toast")).to_have_css("opacity", "0", timeout=TIMEOUT)  # faded
                await page.screenshot(path=target, full_page=True)

            # the phone scans it: the card turns connected by itself, the QR goes
            await probe.sim(A, "scan", {"code": code})
            await expect(card).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
            await expect(qr).to_be_hidden()
            await expect(card.locator(".name")).to_have_text(f"Sim {A[-4:]}")
            await expect(page.locator('#events li[data-type="paired"]')).to_have_count(1, timeout=TIMEOUT)

            # the buttons: requests through the bridge, the state pushed back
            mark = probe.mark()
            await card.locator('[data-action="disconnect"]').click()
            await expect(card).to_have_attribute("data-state", "stopped", timeout=TIMEOUT)
            await probe.wait_state(A, "stopped", after=mark)
            await card.locator('[data-action="connect"]').click()
            await expect(card).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
            await probe.wait_state(A, "connected", after=mark)

            await card.locator('[data-action="test"]').click()
            await card.locator('.test-form input[name="to"]').fill(ANA)
            await card.locator('.test-form button[type="submit"]').click()
            sent = await probe.wait_for(f"{env.base}/sim/{A}/sent", after=mark)
            assert sent.json()["to"].startswith(ANA) and "Test message" in sent.json()["text"]
            await expect(page.locator("#toast")).to_contain_text("send", timeout=TIMEOUT)
            await expect(card.locator('dd[data-key="messages_out"]')).to_have_text("1", timeout=TIMEOUT)

            # a refused request shows the request layer's answer
            await page.fill("#pair-phone", "12")
            await page.click("#pair-button")
            await expect(page.locator("#toast")).to_contain_text("invalid_request", timeout=TIMEOUT)

            # WhatsApp unreachable for a moment: the card shows the error and the next retry (automatic: the engine
            # reconnects a linked session by itself), then recovers
            await probe.sim(B, "outage", {"seconds": 3})
            await page.wait_for_function(
                """phone => {
                    const card = document.querySelector(`.card[data-phone="${phone}"]`);
                    return card.dataset.state === "disconnected" && card.querySelector(".error").textContent !== ""
                        && /in \\d+ s|now|automatic/.test(card.querySelector('dd[data-key="next_retry_at"]')?.textContent);
                }""", arg=B, timeout=TIMEOUT)
            await expect(kitchen).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
            await expect(kitchen.locator(".error")).to_have_text("")

            # remove asks first: cancel keeps the account, yes removes it
            await card.locator('[data-action="remove"]').click()
            await expect(card.locator(".confirm")).to_be_visible()
            await card.locator(".confirm-no").click()
            await expect(card.locator(".confirm")).to_be_hidden()
            await card.locator('[data-action="remove"]').click()
            await card.locator(".confirm-yes").click()
            await expect(card).to_have_count(0, timeout=TIMEOUT)
            assert await page.evaluate("window.sameDocument") is True  # all of it without a reload
            assert refused == [400]  # the pair request for "12", and nothing else
            assert not [p for p in problems if "status of 400" not in p], problems
        finally:
            await browser.close()
    assert bridge.stop() == 0
