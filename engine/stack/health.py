"""The engine's own health, as ``rollout status`` shows it: children, cluster, pre-empted messages.

Three views, each readable with the ``operator`` credential (stream and consumer info,
KV gets), so ``rollout status`` works from any host:

* **children of ``rollout up``** (:func:`publish_supervisor` writes, :func:`read_health`
  reads): the KV key ``engine.supervisor`` holds the supervisor's snapshot (state,
  restarts, crash loops), refreshed on every change and every ``HEALTH_EVERY_S``;
* **pre-empted engine messages**: ``engine.relay.<consumer>`` (written by
  ``consumers/relay.py``) for each engine durable that ever had one;
* **the cluster** (:func:`cluster_view`): the nodes the streams' replica sets name, whether
  each is current, which node leads each stream, and on a partitioned log each partition
  with its consumers, the node leading each and whether a process is pulling from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from rollout_engine.events import subjects
from rollout_engine.events.ids import is_token

__all__ = ["HEALTH_EVERY_S", "cluster_view", "publish_supervisor", "read_health", "text_lines"]

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0
_STREAMS = (subjects.LOG_STREAM, subjects.DLQ_STREAM, f"KV_{subjects.STATE_BUCKET}")


async def publish_supervisor(js: Any, supervisor: Any, stop: asyncio.Event) -> None:
    """Keep ``engine.supervisor`` current until ``stop`` is set (NATS outages are waited out)."""
    key = subjects.engine_key("supervisor")
    kv = None
    while not stop.is_set():
        supervisor.changed.clear()
        try:
            kv = kv or await js.key_value(subjects.STATE_BUCKET)
            await kv.put(key, msgspec.json.encode(supervisor.snapshot()))
        except Exception as exc:  # the cluster may be electing, or the node we use restarting
            log.debug("could not publish the supervisor's health: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_either(stop, supervisor.changed), HEALTH_EVERY_S)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _kv_json(kv: Any, key: str) -> Any:
    try:
        entry = await kv.get(key)
    except Exception:
        return None
    try:
        return msgspec.json.decode(entry.value or b"null")
    except msgspec.DecodeError:
        return None


async def read_health(js: Any, consumer_names: list[str]) -> dict[str, Any]:
    """``{"supervisor": snapshot or None, "preempted": [records]}`` from KV (missing bucket: empty)."""
    try:
        kv = await js.key_value(subjects.STATE_BUCKET)
    except Exception:
        return {"supervisor": None, "preempted": []}
    supervisor = await _kv_json(kv, subjects.engine_key("supervisor"))
    preempted = []
    for name in consumer_names:
        if not is_token(name):
            continue
        record = await _kv_json(kv, subjects.engine_key("relay", name))
        if record:
            preempted.append(record)
    return {"supervisor": supervisor, "preempted": preempted}


def _peers(cluster: Any) -> list[dict[str, Any]]:
    if cluster is None:
        return []
    peers = [{"name": cluster.leader, "leader": True, "current": True, "offline": False}] if cluster.leader else []
    for peer in cluster.replicas or []:
        peers.append({"name": peer.name, "leader": False, "current": bool(peer.current),
                      "offline": bool(peer.offline), "active_s": round((peer.active or 0) / 1e9, 3),
                      "lag": peer.lag or 0})
    return peers


async def cluster_view(js: Any, server_name: str = "") -> dict[str, Any] | None:
    """The cluster as the streams see it; None on a single server (no cluster info)."""
    streams: dict[str, Any] = {}
    nodes: dict[str, dict[str, Any]] = {}
    name = None
    log_info = None
    for stream in _STREAMS:
        try:
            info = await js.stream_info(stream)
        except Exception:
            continue
        if stream == subjects.LOG_STREAM:
            log_info = info
        cluster = info.cluster
        if cluster is None or not cluster.name:
            continue
        name = cluster.name
        peers = _peers(cluster)
        streams[stream] = {"leader": cluster.leader or "", "replicas": [p["name"] for p in peers if not p["leader"]],
                           "lagging": [p["name"] for p in peers if not p["leader"] and (p["offline"] or not p["current"])]}
        for peer in peers:
            seen = nodes.setdefault(peer["name"], {"name": peer["name"], "online": True, "leads": []})
            seen["online"] = seen["online"] and not peer["offline"]
            if peer["leader"]:
                seen["leads"].append(stream)
    if name is None:
        return None
    return {"name": name, "connected_to": server_name, "nodes": sorted(nodes.values(), key=lambda n: n["name"]),
            "streams": streams, "partitions": await _partitions(js, log_info)}


async def _partitions(js: Any, log_info: Any) -> dict[str, Any]:
    """Partitions of the log and the consumers that own each (``<consumer>_p<k>``)."""
    transform = log_info.config.subject_transform if log_info is not None else None
    count = subjects.partition_count(transform.dest if transform else None)
    owners: list[dict[str, Any]] = [{"partition": k, "consumers": []} for k in range(count)]
    unknown = ""
    if count:
        try:
            consumers = await js.consumers_info(subjects.LOG_STREAM)
        except Exception as exc:  # e.g. the stream's leader is being elected: say so, never "no consumer"
            consumers, unknown = [], f"{type(exc).__name__}: {exc}".rstrip(": ")
        for info in consumers:
            base, _, part = info.name.rpartition("_p")
            if base and part.isdigit() and int(part) < count:
                owners[int(part)]["consumers"].append({
                    "name": info.name, "leader": info.cluster.leader if info.cluster else "",
                    "pulling": bool(info.num_waiting), "lag": info.num_pending})
    return {"count": count, "owners": owners, "consumers_unknown": unknown}


def text_lines(health: dict[str, Any], cluster: dict[str, Any] | None) -> list[str]:
    """The lines ``rollout status`` prints for these views (plain text; the caller colours)."""
    lines: list[str] = []
    if cluster:
        nodes = ", ".join(f"{n['name']}{'' if n['online'] else ' (OFFLINE)'}" for n in cluster["nodes"])
        lines.append(f"cluster {cluster['name']}: nodes {nodes}; connected to {cluster['connected_to'] or '?'}")
        for stream, view in cluster["streams"].items():
            behind = f", behind: {', '.join(view['lagging'])}" if view["lagging"] else ""
            lines.append(f"  stream {stream}: leader {view['leader'] or 'NONE'}, replicas {', '.join(view['replicas']) or '-'}"
                         f"{behind}")
        unknown = cluster["partitions"].get("consumers_unknown")
        for owner in cluster["partitions"]["owners"]:
            if unknown:
                lines.append(f"  partition {owner['partition']}: consumers unknown ({unknown}); try again in a few seconds")
                continue
            who = ", ".join(f"{c['name']} (leader {c['leader'] or '?'}, {'pulling' if c['pulling'] else 'idle'}, "
                            f"lag {c['lag']})" for c in owner["consumers"]) or "no consumer"
            lines.append(f"  partition {owner['partition']}: {who}")
    supervisor = health.get("supervisor")
    if supervisor:
        age_s = (time.time() * 1000 - supervisor.get("updated_ms", 0)) / 1000
        if age_s > 5 * HEALTH_EVERY_S:
            lines.append(f"STALE   the children below were last reported {age_s:.0f} s ago: is `rollout up` "
                         f"(pid {supervisor.get('pid')}) still running?")
        for child in supervisor.get("children", []):
            state = child["state"]
            extra = f", {child['fast_exits']} fast exits in a row, next start after {child['backoff_s']:g} s" \
                if state == "crash_loop" else ""
            lines.append(f"child   {child['name']} ({child['kind']}): {state.upper() if state != 'running' else state}, "
                         f"{child['processes']}/{child['instances']} up, restarts {child['restarts']}{extra}")
    for record in health.get("preempted", []):
        lines.append(f"ALERT   consumer {record.get('consumer')}: {record.get('preempted')} engine message(s) found "
                     f"pre-empted (id taken first; last {record.get('last_subject')} by {record.get('taken_by_subject')}); "
                     "re-sent under new ids. The message-id key may have leaked: docs/security.md")
    return lines
