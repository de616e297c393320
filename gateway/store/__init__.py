"""Durable logs for the reliable path.

- :mod:`gateway.store.records`: what is stored (messages, rooms, epochs) and its msgpack encoding.
- :mod:`gateway.store.base`: the :class:`~gateway.store.base.Store` protocol, ``StoreConfig`` (fsync
  levels, retention) and ``open_store`` (stores by name: ``sqlite``, ``memory``).
- :mod:`gateway.store.sqlite`, :mod:`gateway.store.memory`: the implementations.
- :mod:`gateway.store.writer`: ``StoreWriter``, asyncio group commit on the store's one thread.
- :mod:`gateway.store.recovery`: what a restarted gateway resumes from.
"""
