"""Redis Streams for :class:`~embedml.offline.broker.StreamRunner`: a consumer-group source
and a stream sink (needs the ``redis`` extra: ``redis-py``).

URLs: ``redis://[USER:PASSWORD@]HOST:PORT/DB?stream=NAME&group=GROUP&consumer=NAME``,
``rediss://`` for TLS, ``unix:///PATH/redis.sock?stream=...&db=N``. ``group`` and
``consumer`` matter only for a source. Other query parameters go to redis-py as connection
options (``socket_timeout``...).

How delivery works (Redis 6.2 and later):

* new entries come from ``XREADGROUP ... >``; a group that does not exist is created
  (``XGROUP CREATE ... MKSTREAM``) at ``start_id`` (``0``: the whole stream);
* entries left pending by a consumer (dead, or this one before a restart) are claimed:
  ``XPENDING ... IDLE claim_idle_ms`` lists them with their delivery counts, and each is
  taken with ``XCLAIM ... claim_idle_ms`` (so two consumers never both take one: the
  claim resets its idle time). This is what ``XAUTOCLAIM`` does, with the delivery count
  that ``--max-deliveries`` needs and one reply per id, so that an entry deleted from the
  stream meanwhile is told apart (Redis 6.2 answers nil for it; Redis 7 and Valkey answer
  nothing, as for an entry another consumer took, and the stream is asked): it becomes a
  dead letter, as deleted. Claims run at
  the first read and then every ``claim_idle_ms / 2``, one entry per read (scored alone:
  see :class:`~embedml.offline.broker.StreamRunner`); this consumer's own pending
  entries are claimed at the first read whatever their idle time (a restart with the same
  consumer name resumes at once);
* ``XACK`` once the runner has written the results. When the output and dead-letter
  streams are on the source's own server (the same URL but for the query), outputs, dead
  letters and the ``XACK`` go in one Lua script (:meth:`RedisStreamSource.commit`): one
  round trip and one command per batch instead of one ``XADD`` per entry, and atomic, so
  a consumer that dies can no longer leave an output written and its entry pending (no
  duplicate). Where scripts are refused (an ACL without ``EVALSHA``, a cluster with the
  streams in other slots) the source says so once in the log and writes and
  acknowledges separately.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import BrokerError, BrokerUnavailableError, ConfigurationError, import_extra
from .broker import Entry

__all__ = ["RedisStreamSink", "RedisStreamSource", "StreamURL", "parse_stream_url"]

log = logging.getLogger("embedml.offline.redis_streams")

_OURS = ("stream", "group", "consumer")
#: Seconds a command may take on the socket: above the longest blocking read (POLL_MS).
SOCKET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StreamURL:
    """A parsed stream URL: ``client_url`` for redis-py (ours removed from its query),
    ``shown`` (for messages: no password), and the stream, group and consumer."""

    client_url: str
    shown: str
    stream: str
    group: str | None
    consumer: str | None
    #: The server and database: streams with the same one share a Redis keyspace.
    server: str = ""


def parse_stream_url(url: str) -> StreamURL:
    """Split a ``redis://``, ``rediss://`` or ``unix://`` stream URL. Raises
    :class:`ConfigurationError` for another scheme or a missing ``stream``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"a stream URL starts with redis://, rediss:// or unix://, got {_hide(url)!r}"
        )
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OURS])
    if not ours.get("stream"):
        raise ConfigurationError(f"the stream URL {_hide(url)!r} names no stream (?stream=NAME)")
    # by hand: urlunsplit drops the "//" of unix:///path (an empty host)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return StreamURL(
        client_url=f"{base}?{rest}" if rest else base,
        server=f"{base}?{rest}" if rest else base,
        shown=f"{_hide(base)}?stream={ours['stream']}",
        stream=ours["stream"],
        group=ours.get("group") or None,
        consumer=ours.get("consumer") or None,
    )


def _hide(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _redis() -> Any:
    return import_extra("redis", "Redis streams", "redis")[0]


@contextmanager
def _translated(url: str, operation: str) -> Iterator[None]:
    """Redis client errors -> :class:`BrokerUnavailableError` (no answer: retried) or
    :class:`BrokerError` (refused)."""
    redis = _redis()
    exceptions = redis.exceptions
    try:
        yield
    except exceptions.AuthenticationError as exc:  # a ConnectionError subclass: refused, not down
        raise BrokerError(
            f"{operation} on {url}: authentication refused: {exc}", url=url, operation=operation
        ) from exc
    except (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        exceptions.BusyLoadingError,
        OSError,
    ) as exc:
        raise BrokerUnavailableError(
            f"{operation} on {url}: {type(exc).__name__}: {exc}", url=url, operation=operation
        ) from exc
    except exceptions.RedisError as exc:
        raise BrokerError(
            f"{operation} on {url} refused: {exc}", url=url, operation=operation
        ) from exc


def _client(parsed: StreamURL) -> Any:
    redis = _redis()
    try:
        return redis.Redis.from_url(
            parsed.client_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"the stream URL {parsed.shown!r} is invalid: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: str) -> float | None:
    ms, _, _ = entry_id.partition("-")
    return float(ms) if ms.isdigit() else None


class RedisStreamSource:
    """One consumer of a consumer group on a Redis stream (a
    :class:`~embedml.offline.broker.Source`).

    ``url`` as in :func:`parse_stream_url` (``group`` required); ``consumer`` defaults to
    ``HOSTNAME-PID`` (give a stable name so that a restarted process takes back its own
    pending entries at once instead of after ``claim_idle_ms``). ``start_id`` is where a
    group created here starts (``"0"``: the whole stream; ``"$"``: only new entries).
    Raises :class:`ConfigurationError` for a bad URL, :class:`MissingExtraError` without
    redis-py. Nothing is sent to the server until the first call.
    """

    def __init__(
        self,
        url: str,
        *,
        group: str | None = None,
        consumer: str | None = None,
        start_id: str = "0",
        claim_idle_ms: int = 30_000,
    ) -> None:
        parsed = parse_stream_url(url)
        self.stream = parsed.stream
        self.group = group or parsed.group
        if not self.group:
            raise ConfigurationError(
                f"a stream source needs a consumer group: add &group=NAME to {parsed.shown!r}"
            )
        self.consumer = consumer or parsed.consumer or f"{socket.gethostname()}-{os.getpid()}"
        if not isinstance(claim_idle_ms, int) or claim_idle_ms < 1:
            raise ConfigurationError(
                f"claim_idle_ms must be an integer >= 1, got {claim_idle_ms!r}"
            )
        self.url = parsed.shown + f"&group={self.group}"
        self.start_id = start_id
        self.claim_idle_ms = claim_idle_ms
        self._client = _client(parsed)
        self.server = parsed.server
        self._script: Any = None  # the commit script, registered at the first commit
        self._scripts_refused = False
        self._ready = False
        self._own_claimed = False  # this consumer's own pending entries taken back
        self._next_claim = 0.0  # monotonic
        self._out: set[str] = set()  # ids handed to the runner, not yet acknowledged

    def _ensure_group(self) -> None:
        if self._ready:
            return
        with _translated(self.url, "create group"):
            try:
                self._client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
                log.info(
                    "created consumer group %s on %s at %s", self.group, self.stream, self.start_id
                )
            except _redis().exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._ready = True

    def _entries(self, rows: Any, deliveries: int | dict[str, int]) -> list[Entry]:
        # redis-py gives bytes (the client does not decode responses)
        out = [
            Entry(
                entry_id := raw_id.decode(),
                {k.decode(): v for k, v in fields.items()},
                deliveries if isinstance(deliveries, int) else deliveries[entry_id],
                _id_ms(entry_id),
            )
            for raw_id, fields in rows
        ]
        self._out.update(e.id for e in out)
        return out

    def read(self, count: int, block_ms: int) -> list[Entry]:
        try:
            self._ensure_group()
            now = time.monotonic()
            if now >= self._next_claim:
                # One at a time: a redelivered entry may be one that kills its consumer.
                # Claimed alone it is scored alone (the runner reads on once it is
                # acknowledged), so the entries behind it are not charged its deliveries.
                claimed = self._claim(1)
                if not claimed:  # nothing more waits: claim again later
                    self._next_claim = now + self.claim_idle_ms / 2000.0
                if claimed:
                    return claimed
            with _translated(self.url, "read"):
                reply = self._client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=count,
                    block=block_ms if block_ms > 0 else None,
                )
        except BrokerUnavailableError:
            # the broker may have handed out entries in a reply that was lost: take back this
            # consumer's own pending ones (those not in flight here) at the next read
            self._own_claimed, self._next_claim = False, 0.0
            raise
        except BrokerError as exc:
            if "NOGROUP" in str(exc):  # the server lost the group (restarted empty)
                log.warning(
                    "consumer group %s vanished from %s; creating it again at %s",
                    self.group,
                    self.url,
                    self.start_id,
                )
                self._ready = False
                raise BrokerUnavailableError(str(exc), url=self.url, operation="read") from exc
            raise
        if not reply:
            return []
        return self._entries(reply[0][1], 1)

    def _claim(self, count: int) -> list[Entry]:
        """At the first read, this consumer's own pending entries whatever their idle
        time; then entries pending for ``claim_idle_ms`` (any consumer's); each with its
        delivery count."""
        entries: list[Entry] = []
        if not self._own_claimed:
            entries = self._take(count, 0, consumername=self.consumer)
            self._own_claimed = len(entries) < count
        if len(entries) < count:
            entries += self._take(count - len(entries), self.claim_idle_ms, idle=self.claim_idle_ms)
        if entries:
            log.info("claimed %d pending entries on %s", len(entries), self.url)
        return entries

    def _take(self, count: int, min_idle: int, **which: Any) -> list[Entry]:
        """XCLAIM the pending entries ``XPENDING ... **which`` lists (not ours in flight),
        one command per id in one round trip, so each reply tells its own outcome."""
        with _translated(self.url, "claim"):
            # listed past ours in flight: they are pending too, and may fill the first page
            listed = count + len(self._out)
            pending = self._client.xpending_range(
                self.stream, self.group, "-", "+", listed, **which
            )
            pending = [p for p in pending if _text(p["message_id"]) not in self._out][:count]
            if not pending:
                return []
            pipe = self._client.pipeline(transaction=False)
            for p in pending:
                pipe.xclaim(self.stream, self.group, self.consumer, min_idle, [p["message_id"]])
            replies = pipe.execute()
            deleted: set[Any] = set()
            # Redis 7 and Valkey drop a deleted entry from the PEL and answer nothing, as
            # when another consumer claimed it first: tell the two apart by the stream
            unclaimed = [p["message_id"] for p, reply in zip(pending, replies) if not reply]
            if unclaimed:
                check = self._client.pipeline(transaction=False)
                for entry_id in unclaimed:
                    check.xrange(self.stream, min=entry_id, max=entry_id)
                deleted = {i for i, rows in zip(unclaimed, check.execute()) if not rows}
        entries: list[Entry] = []
        for p, reply in zip(pending, replies):
            entry_id = _text(p["message_id"])
            deliveries = int(p["times_delivered"]) + 1
            if reply and reply[0][0] is not None:
                entries += self._entries(reply, deliveries)
            elif reply or p["message_id"] in deleted:  # Redis 6.2 answers [(None, None)]
                entries.append(Entry(entry_id, {}, deliveries, _id_ms(entry_id), deleted=True))
                self._out.add(entry_id)
        return entries

    def ack(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with _translated(self.url, "ack"):
            self._client.xack(self.stream, self.group, *ids)
        self._out.difference_update(ids)

    def commit(self, ids: Sequence[str], writes: Sequence[tuple[Any, Sequence[Any]]]) -> bool:
        """Write each sink's items and acknowledge ``ids`` in one Lua script (see the module
        docstring). ``False`` when it cannot: a sink that is not a :class:`RedisStreamSink`
        on this server, more than one output and one dead-letter sink, or scripts refused
        by the server (then never tried again)."""
        if self._scripts_refused or len(writes) > 2:
            return False
        if not all(
            isinstance(sink, RedisStreamSink) and sink.server == self.server for sink, _ in writes
        ):
            return False
        keys = [self.stream]
        args: list[Any] = [self.group]
        for sink, items in (*writes, *[(None, ())] * (2 - len(writes))):
            keys.append(self.stream if sink is None else sink.stream)
            names = type(items[0]).FIELDS if items else ()
            max_len = "" if sink is None or sink.max_len is None else sink.max_len
            args += [max_len, len(items), len(names), *names]
            for item in items:
                args += item.values()
        args += ids
        with _translated(self.url, "commit"):
            if self._script is None:
                self._script = self._client.register_script(_COMMIT)
            try:
                self._script(keys=keys, args=args)
            except _redis().exceptions.ResponseError as exc:
                if "NOSCRIPT" in str(exc):
                    raise
                self._scripts_refused = True
                log.warning(
                    "%s refused the commit script (%s): writing and acknowledging"
                    " separately from now on",
                    self.url,
                    exc,
                )
                return False
        self._out.difference_update(ids)
        return True

    def pending(self) -> int:
        self._ensure_group()
        with _translated(self.url, "pending"):
            summary = self._client.xpending(self.stream, self.group)
        for c in summary.get("consumers") or []:
            if _text(c["name"]) == self.consumer:
                return int(c["pending"])
        return 0

    def stats(self) -> dict[str, Any]:
        """``pending`` (the group's), ``lag`` (entries not yet delivered to the group:
        ``XINFO GROUPS`` on Redis 7, else counted after the group's last delivered id, up
        to 10,000: ``lag_capped`` says the true lag is larger), and ``lag_ms`` (the
        broker-time distance from the group's last delivered entry to the newest)."""
        self._ensure_group()
        with _translated(self.url, "stats"):
            groups = self._client.xinfo_groups(self.stream)
            info = next((g for g in groups if _text(g["name"]) == self.group), None)
            if info is None:
                return {"pending": None, "lag": None, "lag_ms": None}
            last = _text(info["last-delivered-id"])
            newest = _text(self._client.xinfo_stream(self.stream)["last-generated-id"])
            lag = info.get("lag")
            capped = False
            if lag is None:
                if last == newest:
                    lag = 0
                else:
                    lag = len(
                        self._client.xrange(self.stream, min=f"({last}", max="+", count=10_001)
                    )
                    capped = lag > 10_000
                    lag = min(lag, 10_000)
        last_ms, newest_ms = _id_ms(last), _id_ms(newest)
        return {
            "pending": int(info["pending"]),
            "lag": int(lag),
            "lag_capped": capped,
            "lag_ms": None if last_ms is None or newest_ms is None else newest_ms - last_ms,
        }

    def close(self) -> None:
        self._client.close()


# KEYS: the input stream, the output stream, the dead-letter stream. ARGV: the group; then
# for outputs, and again for dead letters: MAXLEN ('' for none), the count of entries, the
# count of fields, the field names, the values entry by entry; then the ids to acknowledge.
# The XACK comes last and a script runs whole: no acknowledgement without its outputs.
_COMMIT = """
local n = 1
local function arg()
  n = n + 1
  return ARGV[n]
end
local function add(key)
  local maxlen = arg()
  local count = tonumber(arg())
  local k = tonumber(arg())
  local names = {unpack(ARGV, n + 1, n + k)}
  n = n + k
  local fields = {}
  for _ = 1, count do
    for j = 1, k do
      fields[2 * j - 1] = names[j]
      fields[2 * j] = ARGV[n + j]
    end
    n = n + k
    if maxlen == '' then
      redis.call('XADD', key, '*', unpack(fields))
    else
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    end
  end
end
add(KEYS[2])
add(KEYS[3])
for i = n + 1, #ARGV, 1000 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return #ARGV - n
"""


class RedisStreamSink:
    """Writes outputs or dead letters (their ``fields()``) to a Redis stream with one
    pipelined ``XADD`` per entry, in one round trip per batch; ``max_len`` caps the stream
    (approximate ``MAXLEN ~``). Raises :class:`ConfigurationError` for a bad URL."""

    def __init__(self, url: str, *, max_len: int | None = None) -> None:
        parsed = parse_stream_url(url)
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ConfigurationError(f"max_len must be an integer >= 1 or None, got {max_len!r}")
        self.stream = parsed.stream
        self.url = parsed.shown
        self.max_len = max_len
        self.server = parsed.server
        self._client = _client(parsed)

    def write(self, items: Sequence[Any]) -> None:
        if not items:
            return
        with _translated(self.url, "write"):
            pipe = self._client.pipeline(transaction=False)
            for item in items:
                pipe.xadd(self.stream, item.fields(), maxlen=self.max_len, approximate=True)
            pipe.execute()

    def close(self) -> None:
        self._client.close()
