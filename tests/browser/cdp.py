"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No WebSocket client and no npm package needed: with that flag Chromium reads commands from its
fd 3 and writes answers and events to its fd 4, each a JSON object followed by a NUL byte. We
attach to a page with ``flatten`` sessions, so every page command is one JSON line with a
``sessionId``. Every wait here has a deadline, and :meth:`Browser.close` kills the process if it
does not exit in time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "Browser", "CdpError", "Page", "find_chromium"]

# What headless Chromium needs in this sandbox (issue 10); never --disable-quic.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--window-size=1000,720",
)
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a full-page PNG, base64-encoded, fits with room to spare


class CdpError(Exception):
    """Chromium answered a command with an error, or died, or a wait ran out of time."""


def find_chromium() -> str | None:
    """``$CHROMIUM`` if set, else Debian's ``chromium`` (or ``chromium-browser``) on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """A running headless Chromium. Start with :meth:`launch`, end with :meth:`close`."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader) -> None:
        self._process = process
        self._reader = reader
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}  # by sessionId ("" for the browser)
        self._write_fd: int | None = None
        self._pump = asyncio.create_task(self._read_loop())

    @classmethod
    async def launch(
        cls,
        executable: str,
        user_data_dir: Path,
        *,
        stderr_file: Path,
        extra_args: Sequence[str] = (),
    ) -> Browser:
        """Start Chromium with :data:`CHROMIUM_FLAGS` and a fresh ``user_data_dir``.

        Its stderr goes to ``stderr_file`` (read it when something fails). Raises
        :class:`CdpError` if it does not answer a first command within 60 s.
        """
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Chromium insists on fds 3 and 4; bash moves our pipe ends there (dash would refuse fd
        # numbers above 9, which a busy test process easily hands out).
        script = (
            f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        )
        args = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            *extra_args,
            "about:blank",
        ]
        with stderr_file.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                "/bin/bash",
                "-c",
                script,
                "chromium",
                executable,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(to_chrome_r, from_chrome_w),
            )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_MESSAGE_BYTES)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_chrome_r, "rb", 0)
        )
        browser = cls(process, reader)
        browser._write_fd = to_chrome_w
        try:
            await browser.send("Browser.getVersion", timeout_s=60.0)
        except BaseException:
            await browser.close()
            raise
        return browser

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and return its ``result``; raises :class:`CdpError` on an error."""
        if self._write_fd is None:
            raise CdpError("the browser is closed")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message["id"]] = future
        data = json.dumps(message).encode() + b"\0"
        try:
            # Commands are small and Chromium reads them promptly; a blocking write is fine.
            while data:
                data = data[os.write(self._write_fd, data) :]
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise CdpError(f"{method}: no answer within {timeout_s} s") from None
        finally:
            self._waiting.pop(message["id"], None)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def new_page(self) -> Page:
        """Open a blank tab and attach to it."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def close(self) -> None:
        """Ask Chromium to exit; kill it after 10 s. Idempotent."""
        if self._write_fd is not None:
            with contextlib.suppress(CdpError, OSError):
                await self.send("Browser.close", timeout_s=5.0)
            os.close(self._write_fd)
            self._write_fd = None
        try:
            await asyncio.wait_for(self._process.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    async def _read_loop(self) -> None:
        while True:
            try:
                raw = await self._reader.readuntil(b"\0")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break  # Chromium exited (or sent something absurd): fail every waiter below
            message = json.loads(raw[:-1])
            future = self._waiting.get(message.get("id", -1))
            if future is not None and not future.done():
                future.set_result(message)
            elif "method" in message:
                events = self.events.setdefault(message.get("sessionId", ""), [])
                events.append(message)
                del events[:-1000]  # bounded: only the latest events matter for diagnostics
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("Chromium closed its DevTools pipe"))


class Page:
    """One tab of a :class:`Browser`."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        return await self.browser.send(
            method, params, session_id=self.session_id, timeout_s=timeout_s
        )

    async def goto(self, url: str, *, timeout_s: float = 30.0) -> None:
        """Navigate and wait until the document (and its module scripts) has loaded."""
        answer = await self.send("Page.navigate", {"url": url}, timeout_s=timeout_s)
        if answer.get("errorText"):
            raise CdpError(f"navigating to {url}: {answer['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout_s=timeout_s)

    async def evaluate(self, expression: str, *, timeout_s: float = 30.0) -> Any:
        """The JSON value of ``expression`` (awaited if it is a promise); raises on a JS error."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {text}")
        return answer["result"].get("value")

    async def wait_for(
        self, expression: str, *, timeout_s: float = 30.0, interval_s: float = 0.1
    ) -> Any:
        """Poll ``expression`` until it is truthy; return its value. Raises :class:`CdpError`
        with the page's state and console after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = await self.evaluate(expression, timeout_s=timeout_s)
            if value:
                return value
            if loop.time() >= deadline:
                raise CdpError(f"timed out after {timeout_s} s waiting for {expression!r}")
            await asyncio.sleep(interval_s)

    async def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        answer = await self.send("Page.captureScreenshot", {"format": "png"}, timeout_s=60.0)
        return base64.b64decode(answer["data"])

    def console(self) -> list[str]:
        """The page's console messages and uncaught exceptions so far (for failure reports)."""
        out = []
        for event in self.browser.events.get(self.session_id, []):
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                out.append(f"console.{params.get('type')}: {args}")
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                out.append(f"exception: {text}")
        return out
