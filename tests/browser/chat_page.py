"""The chat page as a user drives it: fill the form, press the buttons, read the message list.

Everything goes through the page's own controls (no hooks in app.js for tests), so a test that
passes here passes for a person at the keyboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.browser.cdp import CdpError, Page

__all__ = ["ChatPage", "Shown"]

TIMEOUT_S = 45.0  # generous: a loaded 2-core machine runs Chromium, the gateway and pytest


@dataclass(frozen=True, slots=True)
class Shown:
    """One message as the page lists it."""

    sender: str
    body: str
    key: tuple[int, int, int]  # (lamport, shard, seq), from the element's data-key


_READ_LIST = """
[...document.querySelectorAll('#messages li')].map((li) => ({
  sender: li.dataset.sender,
  body: li.querySelector('.body').textContent,
  key: li.dataset.key.split(',').map(Number),
}))
"""


class ChatPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def open(self, url: str) -> None:
        """Load the page and wait until it has parsed the schema (the Connect button is live)."""
        await self.page.goto(url, timeout_s=TIMEOUT_S)
        await self.wait("!document.getElementById('connect-button').disabled")

    async def wait(self, expression: str, timeout_s: float = TIMEOUT_S) -> Any:
        """Wait for ``expression``; on a timeout, fail with what the page shows and logged."""
        try:
            return await self.page.wait_for(expression, timeout_s=timeout_s)
        except CdpError as exc:
            state = await self.page.evaluate(
                "[document.getElementById('state').textContent,"
                " document.getElementById('error').textContent,"
                " document.getElementById('stats').textContent]"
            )
            raise CdpError(f"{exc}; page shows {state}; console: {self.page.console()}") from None

    async def state(self) -> str:
        value: str = await self.page.evaluate("document.getElementById('state').dataset.state")
        return value

    async def connect(self, name: str, room: str) -> None:
        """Fill in name and room, press Connect, wait until the page has joined the room."""
        await self.page.evaluate(
            f"document.getElementById('name').value = {json.dumps(name)};"
            f"document.getElementById('room').value = {json.dumps(room)};"
            "document.getElementById('connect-button').click()"
        )
        await self.wait("document.getElementById('state').dataset.state === 'joined'")

    async def reconnect(self) -> None:
        """Press Connect again after a disconnect (same name and room) and wait for the join."""
        await self.page.evaluate("document.getElementById('connect-button').click()")
        await self.wait("document.getElementById('state').dataset.state === 'joined'")

    async def disconnect(self) -> None:
        await self.page.evaluate("document.getElementById('connect-button').click()")
        await self.wait("document.getElementById('state').dataset.state === 'closed'")

    async def send(self, text: str) -> None:
        """Type ``text`` into the composer and press Send."""
        await self.page.evaluate(
            f"document.getElementById('body').value = {json.dumps(text)};"
            "document.getElementById('send').click()"
        )

    async def shown(self) -> list[Shown]:
        """The message list, top to bottom."""
        rows = await self.page.evaluate(_READ_LIST)
        return [
            Shown(r["sender"], r["body"], (r["key"][0], r["key"][1], r["key"][2])) for r in rows
        ]

    async def wait_shown(self, count: int, timeout_s: float = TIMEOUT_S) -> list[Shown]:
        """Wait until the list holds at least ``count`` messages and nothing is still pending."""
        await self.wait(
            f"document.querySelectorAll('#messages li').length >= {count}"
            " && document.querySelectorAll('#pending li').length === 0",
            timeout_s,
        )
        return await self.shown()

    async def stats(self) -> str:
        value: str = await self.page.evaluate("document.getElementById('stats').textContent")
        return value
