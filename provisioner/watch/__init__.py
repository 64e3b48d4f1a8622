"""The change feed: `coopctl watch` follows the directory's syncrepl stream (RFC 4533) and
syncs exactly the members that changed, within seconds (see docs/watch.md).

- `syncrepl`: the protocol (Sync Request, Sync State, Sync Info, Sync Done) over one connection;
- `state`: the cookie, the entryUUID map, retries and held members (`<state_dir>/watch/`);
- `watcher`: the loop (batches, guards, periodic full sync, reconnection with backoff);
- `sink`: where batches go (the sync, or a recorder for tests and the benchmark);
- `status`: the status file and Prometheus metrics that say how far behind it is.
"""
