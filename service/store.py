"""ChatKit's store on Redis: threads, items and attachment metadata, each seen only by the visitor who wrote it.

Every key comes from ``service.keys`` under the visitor's hash tag, so another visitor's or tenant's
ids are simply not there. Per visitor:

- ``visitor_threads``: sorted set of thread ids, scored by ``visitor_sequence``;
- ``thread``: the thread's metadata JSON;
- ``thread_items``: sorted set of item ids, scored by ``thread_sequence``, with the JSON in ``thread_item_data``;
- ``attachment``: one attachment's metadata JSON.

Order comes from those counters, never clocks: items written in the same millisecond, or by hosts
whose clocks disagree, keep the order they were written in. Every write refreshes the retention TTL
of the keys it touched and of the visitor's index in the same MULTI/EXEC, so a visitor's data expires
together after the tenant's retention period of inactivity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from chatkit.store import _ID_PREFIXES, NotFoundError, Store, StoreItemType
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from service import keys
from service.context import RequestContext
from service.ids import new_id

T = TypeVar("T")

# Building an adapter costs milliseconds of CPU, so each is built once, not per call.
ITEM_ADAPTER: TypeAdapter[ThreadItem] = TypeAdapter(ThreadItem)
ATTACHMENT_ADAPTER: TypeAdapter[Attachment] = TypeAdapter(Attachment)
# Dumping through the declared type drops the fields of subclasses such as `Thread.items`.
THREAD_ADAPTER: TypeAdapter[ThreadMetadata] = TypeAdapter(ThreadMetadata)

MAX_RECORD_BYTES = 256 * 1024
MAX_PAGE_SIZE = 100
ORDERS = ("asc", "desc")


class RecordTooLarge(ValueError):
    """A thread, item or attachment whose JSON is over ``MAX_RECORD_BYTES``."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__(
            f"This {what} is {size} bytes, over the {MAX_RECORD_BYTES}-byte limit; send something shorter."
        )
        self.size = size


@dataclass(frozen=True)
class _ThreadKeys:
    meta: str
    items: str
    data: str
    sequence: str

    @classmethod
    def of(cls, context: RequestContext, thread_id: str) -> _ThreadKeys:
        scope = (context.tenant_id, context.visitor_id, thread_id)
        return cls(
            keys.thread(*scope), keys.thread_items(*scope), keys.thread_item_data(*scope), keys.thread_sequence(*scope)
        )

    def all(self) -> list[str]:
        return [self.meta, self.items, self.data, self.sequence]


class RedisStore(Store[RequestContext]):
    """Keep ChatKit threads, items and attachment metadata in Redis, scoped to one tenant's visitor."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    # The SDK's ids carry 32 random bits; ours carry 128, so an id can't be guessed or collide.
    def generate_thread_id(self, context: RequestContext) -> str:
        return new_id(_ID_PREFIXES["thread"])

    def generate_item_id(self, item_type: StoreItemType, thread: ThreadMetadata, context: RequestContext) -> str:
        return new_id(_ID_PREFIXES[item_type])

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        """Load a thread's metadata by id."""
        raw = await self._redis.get(_ThreadKeys.of(context, thread_id).meta)
        if raw is None:
            raise NotFoundError(f"Thread {thread_id} not found")
        return THREAD_ADAPTER.validate_json(raw)

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        """Create or replace a thread's metadata; a new thread goes after the visitor's others."""
        body = _bounded("thread", THREAD_ADAPTER.dump_json(thread).decode())
        thread_keys = _ThreadKeys.of(context, thread.id)
        index = keys.visitor_threads(context.tenant_id, context.visitor_id)
        # Looking first keeps the counter still on renames; ZADD NX settles two racing first saves.
        position = await self._redis.zscore(index, thread.id)
        if position is None:
            position = await self._redis.incr(keys.visitor_sequence(context.tenant_id, context.visitor_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(thread_keys.meta, body)
            pipe.zadd(index, {thread.id: position}, nx=True)
            _refresh(pipe, context, thread_keys.all())
            await pipe.execute()

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> Page[ThreadMetadata]:
        """Load a page of the visitor's threads, oldest first for "asc"; expired threads are left out."""
        index = keys.visitor_threads(context.tenant_id, context.visitor_id)

        async def fetch(thread_ids: list[str]) -> list[ThreadMetadata | None]:
            raws = await self._redis.mget([_ThreadKeys.of(context, thread_id).meta for thread_id in thread_ids])
            # A thread whose metadata expired is gone; drop it from the index so no page shows it again.
            expired = [thread_id for thread_id, raw in zip(thread_ids, raws, strict=True) if raw is None]
            if expired:
                await self._redis.zrem(index, *expired)
            return [None if raw is None else THREAD_ADAPTER.validate_json(raw) for raw in raws]

        return await self._page(index, after, limit, order, fetch)

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        """Delete a thread with its items; an unknown id changes nothing."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*_ThreadKeys.of(context, thread_id).all())
            pipe.zrem(keys.visitor_threads(context.tenant_id, context.visitor_id), thread_id)
            _refresh(pipe, context, [])
            await pipe.execute()

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> Page[ThreadItem]:
        """Load a page of a thread's items, in the order they were added for "asc"."""
        thread_keys = _ThreadKeys.of(context, thread_id)
        if not await self._redis.exists(thread_keys.meta):
            raise NotFoundError(f"Thread {thread_id} not found")

        async def fetch(item_ids: list[str]) -> list[ThreadItem | None]:
            raws = await self._redis.hmget(thread_keys.data, item_ids)
            return [None if raw is None else ITEM_ADAPTER.validate_json(raw) for raw in raws]

        return await self._page(thread_keys.items, after, limit, order, fetch)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        """Append an item to a thread; an id already there keeps its place."""
        await self._write_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        """Replace an item in place, or append it when it is new."""
        await self._write_item(thread_id, item, context)

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        """Load one item of a thread by id."""
        raw = await self._redis.hget(_ThreadKeys.of(context, thread_id).data, item_id)
        if raw is None:
            raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")
        return ITEM_ADAPTER.validate_json(raw)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        """Delete one item of a thread; an unknown id changes nothing."""
        thread_keys = _ThreadKeys.of(context, thread_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(thread_keys.items, item_id)
            pipe.hdel(thread_keys.data, item_id)
            _refresh(pipe, context, thread_keys.all())
            await pipe.execute()

    async def save_attachment(self, attachment: Attachment, context: RequestContext) -> None:
        """Create or replace an attachment's metadata."""
        body = _bounded("attachment", attachment.model_dump_json())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.attachment(context.tenant_id, context.visitor_id, attachment.id), body)
            _refresh(pipe, context, [keys.attachment(context.tenant_id, context.visitor_id, attachment.id)])
            await pipe.execute()

    async def load_attachment(self, attachment_id: str, context: RequestContext) -> Attachment:
        """Load an attachment's metadata by id."""
        raw = await self._redis.get(keys.attachment(context.tenant_id, context.visitor_id, attachment_id))
        if raw is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return ATTACHMENT_ADAPTER.validate_json(raw)

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        """Delete an attachment's metadata; an unknown id changes nothing."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.attachment(context.tenant_id, context.visitor_id, attachment_id))
            _refresh(pipe, context, [])
            await pipe.execute()

    async def _write_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        body = _bounded("item", item.model_dump_json())
        thread_keys = _ThreadKeys.of(context, thread_id)

        async def write(pipe: Pipeline) -> None:
            # Watching the thread makes "it exists" and the write one step: an item written
            # while its thread is deleted retries, finds no thread and leaves nothing behind.
            if not await pipe.exists(thread_keys.meta):
                raise NotFoundError(f"Thread {thread_id} not found")
            position = await pipe.zscore(thread_keys.items, item.id)
            if position is None:
                position = await pipe.incr(thread_keys.sequence)
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pipe.zadd(thread_keys.items, {item.id: position}, nx=True)
            pipe.hset(thread_keys.data, item.id, body)
            _refresh(pipe, context, thread_keys.all())

        await self._redis.transaction(write, thread_keys.meta)

    async def _page(
        self,
        index: str,
        after: str | None,
        limit: int,
        order: str,
        fetch: Callable[[list[str]], Awaitable[Sequence[T | None]]],
    ) -> Page[T]:
        """Walk ``index`` past the cursor until a page is full, skipping ids ``fetch`` finds gone."""
        if order not in ORDERS:
            raise ValueError(f"Order must be 'asc' or 'desc', got {order!r}.")
        size = max(1, min(limit, MAX_PAGE_SIZE))
        bound = await self._cursor(index, after)
        found: list[tuple[str, T]] = []
        while len(found) <= size:
            wanted = size + 1 - len(found)
            batch = await self._range(index, bound, wanted, order)
            values = await fetch([member for member, _ in batch]) if batch else []
            found += [(member, value) for (member, _), value in zip(batch, values, strict=True) if value is not None]
            if len(batch) < wanted:
                break
            bound = batch[-1][1]
        page, has_more = found[:size], len(found) > size
        return Page(data=[value for _, value in page], has_more=has_more, after=page[-1][0] if has_more else None)

    async def _cursor(self, index: str, after: str | None) -> float | None:
        # The cursor is the last id of the previous page. If it is gone (deleted or expired) we can't
        # tell where that page ended; restarting would repeat rows and an empty page would hide the
        # rest, so say so instead.
        if after is None:
            return None
        score = await self._redis.zscore(index, after)
        if score is None:
            raise NotFoundError(f"Cursor {after} not found; reload from the first page")
        return float(score)

    async def _range(self, index: str, bound: float | None, count: int, order: str) -> list[tuple[str, float]]:
        """Return up to ``count`` members with their scores strictly past ``bound`` in ``order``."""
        # Scores are unique counter values, so an exclusive bound never skips a member.
        if order == "asc":
            low = "-inf" if bound is None else f"({bound:.0f}"
            rows = await self._redis.zrangebyscore(index, low, "+inf", start=0, num=count, withscores=True)
        else:
            high = "+inf" if bound is None else f"({bound:.0f}"
            rows = await self._redis.zrevrangebyscore(index, high, "-inf", start=0, num=count, withscores=True)
        # withscores=True gives (member, score) pairs; redis-py types every ZRANGE form as one union.
        return [(str(member), float(score)) for member, score in cast(list[tuple[str, float]], rows)]


def _refresh(pipe: Pipeline, context: RequestContext, touched: list[str]) -> None:
    """Queue a TTL refresh of the touched keys and the visitor's index."""
    index = [keys.visitor_threads(context.tenant_id, context.visitor_id)]
    index.append(keys.visitor_sequence(context.tenant_id, context.visitor_id))
    for key in [*touched, *index]:
        pipe.expire(key, context.retention_seconds)


def _bounded(what: str, body: str) -> str:
    size = len(body.encode())
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(what, size)
    return body
