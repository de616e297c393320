"""``make soak``: a long load run with faults, and two hard checks: no acknowledged reliable
message lost, and the gateway's memory levels off.

``python -m loadgen.soak`` starts a gateway subprocess as deployed (token auth with a secret made
for the run, a SQLite store in the results directory; :mod:`loadgen.gatewayproc`) and runs the
``soak`` scenario (``loadgen/scenarios/soak.toml``) against it, every client with its own token,
with these faults:

- **kill -9**: at ``kill_at`` of the publishing time the gateway is SIGKILLed, and restarted
  ``restart_after_s`` later on the same port with the same store. Clients notice the silence
  (their QUIC idle timeout, ``idle_timeout_s``), reconnect, resume every room from their cursors
  and re-send their unacknowledged publishes.
- **5% packet loss** (``loss``) each way on every client's path (the impaired-path relay).
- **slow consumers**: a fraction of the clients stall now and then (their path carries nothing
  for seconds). The soak's gateway has a small send budget (``send_budget_bytes``) and a short
  ``slow_consumer_s``, so it sheds their chatter and cuts some with SLOW_CONSUMER; those come
  back with a new session and read what they missed from the stored history.

Then it checks (:mod:`loadgen.soak_results`): every acked reliable message reached every client
that stayed and is in the store; the RSS of the restarted gateway grew by less than
``max(rss_growth_mib, rss_growth_fraction)`` from the middle to the last third of its loaded time.
It prints a table, writes ``<out>/soak-<time>.json`` and ``.png`` and exits 0 only if every check
passed (1 otherwise, 2 for bad usage). All traffic stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen.auth import TokenSource
from loadgen.cli import Outcome
from loadgen.gatewayproc import GatewayProcess, start_gateway
from loadgen.history import read_history
from loadgen.report import write_json
from loadgen.results import machine_info
from loadgen.runner import LoadgenError, Progress, RunOptions, RunResult, run_load
from loadgen.scenario import Scenario, load_scenario
from loadgen.soak_report import plot_soak, render_soak
from loadgen.soak_results import RssSample, plateau, soak_checks, store_audit

__all__ = ["SCHEMA", "SoakConfig", "main", "run_soak"]

SCHEMA = "skein.soak.results/1"
MAX_RSS_SAMPLES = 100_000
READY_AFTER_RESTART_S = 60.0
AUDIT_ATTEMPTS = 3

_psutil: Any = importlib.import_module("psutil")  # untyped: imported by name, as Any
_Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    """One soak. Scenario fields left None keep the scenario's (``soak.toml``: 40 clients, 360 s).

    ``kill_at`` is the fraction of the publishing time at which the gateway is killed (0 = no
    kill: the soak then fails its kill check), ``restart_after_s`` how long it stays dead.
    ``loss`` is the loss probability each way on every path; ``slow_fraction`` the share of
    clients that stall. ``send_budget_bytes``, ``slow_consumer_s`` and
    ``log_messages_per_shard`` go to the gateway's ``[core]``: a budget and a patience scaled
    down with the soak's traffic (a hot room carries a few KB/s here), so that stalls of a few
    seconds shed and cut (the defaults, 256 KiB and 10 s, are for real rooms); a 1,000-message
    in-memory log per
    shard (default 10,000) so that it fills early in the run and the plateau is measured on
    full buffers rather than on buffers still filling.
    """

    scenario: str = "soak"
    clients: int | None = None
    duration_s: float | None = None
    drain_s: float | None = None
    seed: int | None = None
    workers: int = os.cpu_count() or 1
    kill_at: float = 0.3
    restart_after_s: float = 2.0
    loss: float = 0.05
    slow_fraction: float | None = None
    send_budget_bytes: int = 8_192
    slow_consumer_s: float = 3.0
    log_messages_per_shard: int = 1_000
    rss_growth_mib: float = 20.0
    rss_growth_fraction: float = 0.10
    idle_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    out_dir: Path = Path("results")
    certs_dir: Path = Path("certs")

    def __post_init__(self) -> None:
        if not 0.0 <= self.kill_at < 1.0:
            raise ValueError("kill_at must be a fraction of the run in 0..1")
        if not 0.0 <= self.restart_after_s <= 60.0:
            raise ValueError("restart_after_s must be within 0..60")
        if not 0.0 <= self.loss < 0.5:
            raise ValueError("loss must be a probability below 0.5")
        if self.rss_growth_mib <= 0 or self.rss_growth_fraction <= 0:
            raise ValueError("the RSS growth bounds must be > 0")

    def load(self) -> Scenario:
        """The scenario with this soak's overrides. Raises ValueError."""
        settings = [f"paths.custom.lossy.loss={self.loss}", "paths.mix={lossy = 1}"]
        if self.slow_fraction is not None:
            settings.append(f"stalls.fraction={self.slow_fraction}")
        return load_scenario(
            self.scenario,
            settings=settings,
            clients=self.clients,
            duration_s=self.duration_s,
            drain_s=self.drain_s,
            seed=self.seed,
        )


class _Watch:
    """The soak's clock, the run's phases as first seen, the faults' events and RSS samples."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.phases: dict[str, float] = {}
        self.events: list[tuple[float, str]] = []
        self.samples: list[RssSample] = []
        self.kills = 0
        self.publishing = asyncio.Event()  # set once every worker has started publishing

    def now(self) -> float:
        return round(time.monotonic() - self.origin, 3)

    def event(self, what: str) -> None:
        self.events.append((self.now(), what))

    def progress(self, progress: Progress) -> None:
        self.phases.setdefault(progress.phase, self.now())
        if progress.phase == "running":
            self.publishing.set()


async def _sample_rss(gateway: GatewayProcess, watch: _Watch) -> None:
    """Every second, the RSS and CPU of whichever process is the gateway now (none while dead)."""
    process: Any = None
    while len(watch.samples) < MAX_RSS_SAMPLES:
        await asyncio.sleep(1.0)
        try:
            if process is None or process.pid != gateway.pid:
                process = _psutil.Process(gateway.pid)
                process.cpu_percent(None)  # the first call only sets the baseline
                continue
            with process.oneshot():
                rss = int(process.memory_info().rss)
                cpu = float(process.cpu_percent(None))
        except (_psutil.Error, OSError):
            process = None  # killed, or not yet restarted
            continue
        watch.samples.append(RssSample(watch.now(), process.pid, rss, cpu))


async def _faults(
    gateway: GatewayProcess, watch: _Watch, config: SoakConfig, scenario: Scenario, say: _Say
) -> None:
    """kill -9 at ``kill_at`` of the publishing time, restart after ``restart_after_s``, wait
    until the new process is ready. Raises LoadgenError if it does not come back."""
    if config.kill_at <= 0:
        return
    async with asyncio.timeout(600.0 + scenario.clients):  # the connect phase's bound, and more
        await watch.publishing.wait()
    running = watch.phases["running"]
    await asyncio.sleep(max(0.0, running + config.kill_at * scenario.duration_s - watch.now()))
    await asyncio.to_thread(gateway.kill)
    watch.kills += 1
    watch.event("killed")
    say(f"kill -9 gateway (pid {gateway.process.pid}) at {watch.now():.0f} s")
    await asyncio.sleep(config.restart_after_s)
    gateway.restart()
    watch.event("restarted")
    await asyncio.to_thread(gateway.wait_ready, READY_AFTER_RESTART_S)
    watch.event("ready")
    say(f"gateway restarted (pid {gateway.pid}), ready at {watch.now():.0f} s")


async def _audit(gateway: GatewayProcess, result: RunResult, ca_file: Path) -> dict[str, Any]:
    """Read every room's stored history and compare it with the acked reliable messages.
    Raises LoadgenError if a room's history cannot be read (after AUDIT_ATTEMPTS tries)."""
    token = ""
    if gateway.secret is not None:
        token = TokenSource(secret=gateway.secret).for_client("soak-auditor", "*", time.time())
    bodies: dict[str, list[bytes]] = {}
    for room in result.expected.reliable:
        for attempt in range(1, AUDIT_ATTEMPTS + 1):
            try:
                stored = await read_history(
                    f"https://127.0.0.1:{gateway.port}", room, {}, ca_file=ca_file, token=token
                )
                break
            except Exception as exc:  # any failure to read: try again, then say why
                if attempt == AUDIT_ATTEMPTS:
                    raise LoadgenError(f"could not read the history of {room}: {exc!r}") from exc
                await asyncio.sleep(attempt)
        bodies[room] = [m.body for m in stored]
    return store_audit(result.expected.reliable, bodies)


def _plateau(gateway: GatewayProcess, watch: _Watch, config: SoakConfig) -> dict[str, Any]:
    """The plateau of the gateway process now running, over its time with clients publishing."""
    ready = [t for t, what in watch.events if what == "ready"]
    start = ready[-1] if ready else watch.phases.get("running", 0.0)
    end = watch.phases.get("draining", watch.now())
    return plateau(
        watch.samples,
        pid=gateway.pid,
        start_s=start,
        end_s=end,
        growth_mib=config.rss_growth_mib,
        growth_fraction=config.rss_growth_fraction,
    )


async def _run(
    gateway: GatewayProcess, config: SoakConfig, scenario: Scenario, console: Console, live: bool
) -> tuple[RunResult, _Watch, dict[str, Any]]:
    watch = _Watch()
    ttl_s = max(3600.0, 2 * (scenario.duration_s + scenario.drain_s) + 600.0)
    assert gateway.secret is not None
    options = RunOptions(
        target_url=gateway.url,
        ca_file=gateway.ca_file,
        workers=config.workers,
        tokens=TokenSource(secret=gateway.secret, ttl_s=ttl_s),
        idle_timeout_s=config.idle_timeout_s,
        keepalive_s=min(2.0, config.idle_timeout_s / 3),
        request_timeout_s=config.request_timeout_s,
        label="soak",
    )
    loop = asyncio.get_running_loop()
    sampler = loop.create_task(_sample_rss(gateway, watch))
    view = _view(console, scenario, gateway, watch) if live else None
    say = view.say if view is not None else (lambda text: console.print(text))
    faults = loop.create_task(_faults(gateway, watch, config, scenario, say))
    try:
        with view or contextlib.nullcontext():
            on_progress = view.update if view is not None else watch.progress
            result = await run_load(scenario, options, on_progress=on_progress)
        if not faults.done():
            faults.cancel()  # the run ended before the kill was due
        with contextlib.suppress(asyncio.CancelledError):
            await faults  # a restart that failed raises here
        audit = await _audit(gateway, result, gateway.ca_file)
    finally:
        for task in (sampler, faults):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LoadgenError):
                await task
    return result, watch, audit


def _view(console: Console, scenario: Scenario, gateway: GatewayProcess, watch: _Watch) -> Any:
    from loadgen.progress import LiveView

    def status() -> str:
        sample = watch.samples[-1] if watch.samples else None
        rss = f"rss {sample.rss_bytes / 2**20:.0f} MiB" if sample else "rss n/a"
        return f"gateway pid {gateway.pid}, kills {watch.kills}, restarts {gateway.restarts}, {rss}"

    return LiveView(
        console,
        title=f"skein soak: {scenario.clients} clients, {scenario.duration_s:g} s",
        clients=scenario.clients,
        duration_s=scenario.duration_s,
        extra=status,
        on_update=watch.progress,
    )


def _document(
    config: SoakConfig,
    result: RunResult,
    watch: _Watch,
    audit: dict[str, Any],
    rss: dict[str, Any],
    gateway: GatewayProcess,
) -> dict[str, Any]:
    run = dict(result.summary)
    run.pop("histograms", None)  # the loadgen results file keeps those; the soak keeps figures
    checks = soak_checks(run, audit, rss, kills=watch.kills, restarted=gateway.restarts > 0)
    return {
        "schema": SCHEMA,
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
        },
        "machine": machine_info(),
        "faults": {
            "kills": watch.kills,
            "restarts": gateway.restarts,
            "events": watch.events,
            "phases": watch.phases,
            "running_at_s": watch.phases.get("running"),
        },
        "rss": {
            "columns": ["t_s", "pid", "rss_bytes", "cpu_percent"],
            "samples": [[s.t_s, s.pid, s.rss_bytes, s.cpu_percent] for s in watch.samples],
            "plateau": rss,
        },
        "store_audit": audit,
        "run": run,
        "checks": checks,
        "passed": checks["passed"],
    }


async def run_soak(
    config: SoakConfig, *, console: Console | None = None, live: bool = False
) -> Outcome:
    """Run one soak (see the module docstring) and write its JSON and PNG into
    ``config.out_dir``. Raises ValueError for a bad scenario, LoadgenError if the run could not
    be carried out (the gateway did not start or come back, no client connected)."""
    console = console or Console()
    scenario = config.load()
    gateway = start_gateway(
        config.out_dir,
        port=0,
        admin_port=0,
        certs_dir=config.certs_dir,
        name="soak",
        core={
            "send_budget_bytes": config.send_budget_bytes,
            "slow_consumer_s": config.slow_consumer_s,
            "log_messages_per_shard": config.log_messages_per_shard,
        },
    )
    console.print(f"soak gateway on udp://127.0.0.1:{gateway.port} (log: {gateway.log})")
    try:
        await asyncio.to_thread(gateway.wait_ready)
        result, watch, audit = await _run(gateway, config, scenario, console, live)
        rss = _plateau(gateway, watch, config)
    finally:
        gateway.stop()
    doc = _document(config, result, watch, audit, rss, gateway)
    base = config.out_dir / f"soak-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    plot_path: Path | None = base.with_suffix(".png")
    try:
        assert plot_path is not None
        plot_soak(doc, plot_path)
    except Exception as exc:  # the figures matter more than the picture: keep them
        console.print(f"[yellow]could not draw the plot: {exc!r}[/yellow]")
        plot_path = None
    doc["plot"] = str(plot_path) if plot_path else None
    json_path = base.with_suffix(".json")
    write_json(json_path, doc)
    render_soak(console, doc)
    console.print(f"results: {json_path}")
    if plot_path is not None:
        console.print(f"plot:    {plot_path}")
    return Outcome(doc, json_path, plot_path)


def _parser() -> argparse.ArgumentParser:
    d = SoakConfig()
    parser = argparse.ArgumentParser(
        prog="python -m loadgen.soak",
        description=(
            "Soak the gateway: a long load run (token auth, SQLite store) with a kill -9 and "
            "restart mid-run, packet loss on every path and slow consumers. Fails unless no "
            "acknowledged reliable message is lost and the restarted gateway's RSS levels off."
        ),
    )
    parser.add_argument("--duration", type=float, metavar="S", help="publishing time (360)")
    parser.add_argument("--clients", type=int, metavar="N", help="clients (40)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--workers", type=int, default=d.workers, metavar="N")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=d.kill_at,
        metavar="F",
        help=f"kill -9 at this fraction of the run (default {d.kill_at}; 0: never)",
    )
    parser.add_argument(
        "--restart-after",
        type=float,
        default=d.restart_after_s,
        metavar="S",
        help="restart the killed gateway this long after (%(default)s s)",
    )
    parser.add_argument("--loss", type=float, default=d.loss, help=f"loss each way ({d.loss})")
    parser.add_argument(
        "--slow-fraction",
        type=float,
        metavar="F",
        help="share of clients that stall (the scenario's: 0.15)",
    )
    parser.add_argument(
        "--rss-growth-mib",
        type=float,
        default=d.rss_growth_mib,
        metavar="MIB",
        help="RSS rise allowed from the middle to the last third (%(default)s MiB, or ...)",
    )
    parser.add_argument(
        "--rss-growth-percent",
        type=float,
        default=100 * d.rss_growth_fraction,
        metavar="PCT",
        help="... this percentage of the middle third's RSS, whichever is larger (%(default)s)",
    )
    parser.add_argument("--out", type=Path, default=d.out_dir, help="results directory")
    parser.add_argument("--no-live", action="store_true", help="no live progress display")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        config = SoakConfig(
            clients=args.clients,
            duration_s=args.duration,
            seed=args.seed,
            workers=args.workers,
            kill_at=args.kill_at,
            restart_after_s=args.restart_after,
            loss=args.loss,
            slow_fraction=args.slow_fraction,
            rss_growth_mib=args.rss_growth_mib,
            rss_growth_fraction=args.rss_growth_percent / 100.0,
            out_dir=args.out,
        )
        config.load()
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    live = not args.no_live and console.is_terminal
    try:
        outcome = asyncio.run(run_soak(config, console=console, live=live))
    except LoadgenError as exc:
        print(f"soak: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
