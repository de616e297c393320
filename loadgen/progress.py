"""The live display while a run goes: connect and run progress bars and the running counters."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn
from rich.progress import Progress as Bars
from rich.table import Table

from loadgen.runner import Progress

__all__ = ["LiveView"]


class LiveView:
    """A rich Live display fed by :func:`loadgen.runner.run_load`'s ``on_progress``.

    Use as a context manager around the run; :meth:`update` may be called any number of times.
    ``extra`` gives one more status line (the soak's gateway state); ``on_update`` is also called
    with every progress report; :meth:`say` prints a line above the display.
    """

    def __init__(
        self,
        console: Console,
        *,
        title: str,
        clients: int,
        duration_s: float,
        extra: Callable[[], str] | None = None,
        on_update: Callable[[Progress], None] | None = None,
    ) -> None:
        self._console = console
        self._title = title
        self._duration_s = duration_s
        self._extra = extra
        self._on_update = on_update
        self._bars = Bars(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            console=console,
            auto_refresh=False,
        )
        self._connect = self._bars.add_task("connecting", total=clients)
        self._run = self._bars.add_task("running", total=round(duration_s), start=False)
        self._run_started: float | None = None
        self._status: RenderableType = ""
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def _render(self) -> RenderableType:
        extra = escape(self._extra()) if self._extra is not None else ""
        return Group(f"[bold]{escape(self._title)}[/bold]", self._bars, self._status, extra)

    def say(self, text: str) -> None:
        """Print ``text`` above the live display."""
        self._live.console.print(text)

    def update(self, progress: Progress) -> None:
        if self._on_update is not None:
            self._on_update(progress)
        c = progress.counters
        self._bars.update(
            self._connect, completed=c.get("connected", 0) + c.get("connect_failed", 0)
        )
        if progress.phase in ("running", "draining", "closing"):
            if self._run_started is None:
                self._run_started = progress.elapsed_s
                self._bars.start_task(self._run)
            done = min(self._duration_s, progress.elapsed_s - self._run_started)
            self._bars.update(self._run, completed=round(done))
        grid = Table.grid(padding=(0, 2))
        grid.add_row(
            f"phase [cyan]{progress.phase}[/cyan]",
            f"published {c.get('published', 0):,} (acked {c.get('acked', 0):,})",
            f"delivered {c.get('delivered', 0):,}",
        )
        grid.add_row(
            f"handoffs {c.get('handoffs', 0):,}",
            f"migrations {c.get('migrate_ok', 0)} ok / {c.get('migrate_failed', 0)} failed",
            f"reconnects {c.get('reconnect_ok', 0)} ok / {c.get('reconnect_failed', 0)} failed",
        )
        alarms = c.get("duplicates", 0) + c.get("order_violations", 0)
        sample = progress.sample
        gateway = "gateway not sampled"
        if sample is not None and sample.gateway_cpu_percent is not None:
            rss_mb = (sample.gateway_rss_bytes or 0) / 2**20
            gateway = f"gateway cpu {sample.gateway_cpu_percent:.0f}%  rss {rss_mb:.0f} MB"
        grid.add_row(
            gateway,
            f"publish failures {c.get('publish_failed', 0)}",
            f"[{'red' if alarms else 'green'}]duplicates+order violations {alarms}[/]",
        )
        self._status = grid
        self._live.update(self._render())
