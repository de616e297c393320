"""The restart-and-retry duplicate audit (issue 21 item 1, in `make soak`).

Twenty times: a real gateway process (SQLite, fsync normal) takes a batch of HIGH publishes
from eight publishers at once and is killed with SIGKILL at a random moment among them, so that
some were acked, some stored with their ack lost, some never arrived. The next process on the
same store and port then takes the retries, with the same client_msg_ids and bodies: of every
publish of the killed batch, and of a random sample of older ones (all within the 4,096-id retry
window, across several restarts). At the end the store is read directly:

- 0 duplicates: no client_msg_id is stored twice;
- 0 missing: every publish ever acked is stored (and, since every one is retried until acked,
  every publish sent);
- 0 moved: a retry of an acked publish is acked at the (shard, seq) of its first ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

from bench.gateway import free_udp_port, gateway_process
from gateway.sdk.client import Client, connect
from gateway.server.certs import CertPaths
from tests.e2e.test_restart_retry import durable_config, publish_as, stored

TRIALS = 20
BATCH = 80  # fresh publishes per trial, eight in flight at once
OLDER_RETRIED = 40  # a sample of earlier trials' publishes retried after each restart
ROOM = "vault"


async def _publish_until_killed(
    pub: Client, ids: list[str], acked: dict[str, tuple[int, int]], kill_after: int, kill: Any
) -> None:
    """Publish ``ids``, eight at a time, and SIGKILL the gateway as the ``kill_after``-th ack
    arrives, with seven more publishes in flight; those are abandoned (the client is not told:
    their retries come after the restart)."""
    queue = iter(ids)
    due = asyncio.Event()
    count = 0

    async def publisher() -> None:
        nonlocal count
        for msg_id in queue:
            ack = await publish_as(pub, ROOM, msg_id.encode(), msg_id)
            acked.setdefault(msg_id, (ack.shard, ack.seq))
            count += 1
            if count >= kill_after:
                due.set()

    tasks = [asyncio.create_task(publisher()) for _ in range(8)]
    async with asyncio.timeout(60):
        await due.wait()
    kill()
    await asyncio.sleep(0.2)  # answers already on the wire arrive, or not
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _retry(
    pub: Client, ids: list[str], acked: dict[str, tuple[int, int]], moved: list[str]
) -> None:
    queue = iter(ids)

    async def retrier() -> None:
        for msg_id in queue:
            ack = await publish_as(pub, ROOM, msg_id.encode(), msg_id)
            first = acked.setdefault(msg_id, (ack.shard, ack.seq))
            if first != (ack.shard, ack.seq):
                moved.append(msg_id)

    async with asyncio.timeout(120):
        await asyncio.gather(*(retrier() for _ in range(8)))


async def test_kill9_between_publish_and_retry_stores_each_publish_once(
    certs: CertPaths, ca_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "skein.db"
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    config = durable_config(db)
    rng = random.Random(21)
    acked: dict[str, tuple[int, int]] = {}  # client_msg_id -> (shard, seq) of its first ack
    sent: list[str] = []
    moved: list[str] = []
    killed_batch: list[str] = []
    ack_lost = in_flight = 0
    for trial in range(TRIALS + 1):  # the last start only takes the last batch's retries
        with gateway_process(config, port=port, certs=certs) as gateway:
            async with connect(url, name="pub", ca_file=ca_file, reconnect=False) as pub:
                await pub.join(ROOM)
                older = [i for i in sent if i not in set(killed_batch)]
                sample = rng.sample(older, min(OLDER_RETRIED, len(older)))
                await _retry(pub, killed_batch + sample, acked, moved)
                if trial == TRIALS:
                    break
                killed_batch = [f"t{trial}-{i}" for i in range(BATCH)]
                sent += killed_batch
                await _publish_until_killed(
                    pub, killed_batch, acked, rng.randrange(1, BATCH - 8), gateway.process.kill
                )
            gateway.process.wait(10)
        # While no gateway runs: which of the publishes not acked made it into the store
        # anyway (their ack was lost with the process)? Their retries must not store them again.
        unacked = [i for i in killed_batch if i not in acked]
        in_store = {m.body.decode() for m in stored(db, ROOM)}
        ack_lost += sum(i in in_store for i in unacked)
        in_flight += len(unacked)
    bodies = Counter(m.body.decode() for m in stored(db, ROOM))
    print(
        f"restart-retry audit: {TRIALS} kill -9s, {len(sent)} publishes, {in_flight} not acked "
        f"when killed ({ack_lost} of them stored, their ack lost), {len(bodies)} stored"
    )
    duplicates = {msg_id: n for msg_id, n in bodies.items() if n > 1}
    missing = [msg_id for msg_id in sent if msg_id not in bodies]
    assert not duplicates, f"{len(duplicates)} publishes stored twice: {list(duplicates)[:5]}"
    assert not missing, f"{len(missing)} publishes missing: {missing[:5]}"
    assert not moved, f"{len(moved)} retries acked at a new place: {moved[:5]}"
    assert len(acked) == len(sent) == TRIALS * BATCH and sum(bodies.values()) == len(sent)
