"""`python -m bench.profile` works: stacks land in the right buckets, and a short real run (gateway,
subscribers and profiler in their own processes) produces buckets that add up. How fast the
gateway is, is the profile's business, not this test's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.profile import BUCKETS, Options, _parser, _write, profile_run, read_pyspy_raw

# Collapsed stacks as `py-spy record --native --format raw` writes them (root first).
RAW = """\
main (gateway/cli.py:10);_run_once (asyncio/base_events.py:1884);select (selectors.py:468);epoll_wait (libc.so.6) 50
main (gateway/cli.py:10);transmit (aioquic/asyncio/protocol.py:123);_end_packet (aioquic/quic/packet_builder.py:294) 7
main (gateway/cli.py:10);encrypt (aioquic/_crypto.py:40);EVP_CipherUpdate (cryptography/hazmat/bindings/_rust.abi3.so);memcpy (libc.so.6) 3
main (gateway/cli.py:10);receive_datagram (aioquic/quic/connection.py:1189);Buffer_init (aioquic/_buffer.c:42) 2
main (gateway/cli.py:10);_core (qh3/quic/connection.py:881);0x7f00 (qh3/_hazmat.abi3.so) 4
main (gateway/cli.py:10);encode (gateway/wire/codec.py:183);PyUpb_Message_SetAttr (_message.abi3.so);PyObject_Malloc (libpython3.11.so.1.0) 5
main (gateway/cli.py:10);pack (gateway/wire/codec.py:200);compress (lz4/block/_block.c:120) 1
main (gateway/cli.py:10);transmit (aioquic/asyncio/protocol.py:131);sendto (asyncio/selector_events.py:1200);sock_sendto (socketmodule.c:4381);sendto (libc.so.6) 6
main (gateway/cli.py:10);_deliver (gateway/server/app.py:340);0x7f1aad4a3f16 (libc.so.6) 8
main (gateway/cli.py:10);_deliver (gateway/server/app.py:340);gc_collect_main (libpython3.11.so.1.0) 1
_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81);PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f1 (libc.so.6) 20
"""


def test_stacks_go_to_the_innermost_known_frame() -> None:
    profile = read_pyspy_raw(RAW.splitlines())
    assert profile.idle == 70  # the event loop in epoll_wait and the idle executor thread
    assert dict(profile.buckets) == {
        "QUIC packets + crypto (aioquic)": 10,  # packet_builder + the AEAD in cryptography
        "QUIC/H3 engine, other Python": 2,  # aioquic's _buffer
        "QUIC native core (qh3, not split)": 4,
        "protobuf": 5,  # upb, with the allocation it asked for
        "lz4": 1,
        "asyncio + socket I/O": 6,
        "Skein (gateway.*)": 8,  # libc helpers count for their caller
        "other (interpreter, GC, stdlib)": 1,  # the GC
    }
    assert profile.total == 37


def test_runs_of_two_engines_share_one_file(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    _write(out, {"engine": "aioquic", "n": 1})
    _write(out, {"engine": "qh3", "n": 2})
    _write(out, {"engine": "aioquic", "n": 3})
    assert json.loads(out.read_text())["runs"] == {
        "aioquic": {"engine": "aioquic", "n": 3},
        "qh3": {"engine": "qh3", "n": 2},
    }


@pytest.mark.parametrize("profiler", ["py-spy", "cprofile"])
def test_a_short_run_fills_every_bucket_row(profiler: str) -> None:
    opts = Options(profiler=profiler, subscribers=5, rate_per_s=20, warmup_s=1.0, seconds=2.0)
    try:
        result = profile_run(opts)
    except RuntimeError as exc:
        if profiler == "py-spy" and "py-spy failed" in str(exc):
            pytest.skip(f"py-spy cannot sample here (no ptrace?): {exc}")
        raise
    assert [row["bucket"] for row in result["buckets"]] == list(BUCKETS)
    assert sum(row["share_pct"] for row in result["buckets"]) == pytest.approx(100, abs=0.5)
    assert result["samples"] > 0
    assert result["unprofiled"]["deliveries"] > 0 and result["profiled"]["deliveries"] > 0
    assert result["unprofiled"]["us_per_delivery"] > 0
    if profiler == "cprofile":  # it times every call, so the QUIC engine can't be missing
        quic = [r for r in result["buckets"] if r["bucket"].startswith("QUIC")]
        assert sum(r["share_pct"] for r in quic) > 0


def test_the_old_rate_flags_still_work() -> None:
    """Rates are spelled ``_per_s``; the commands in docs/performance.md's older records use
    ``--rate-hz`` and ``--sample-hz``, which mean the same."""
    new = _parser().parse_args(["--rate-per-s", "50", "--sample-per-s", "100"])
    old = _parser().parse_args(["--rate-hz", "50", "--sample-hz", "100"])
    assert vars(old) == vars(new)
    assert (new.rate_per_s, new.sample_per_s) == (50.0, 100)
