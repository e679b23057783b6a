"""The store contract: what ChatKit and the endpoints rely on, on fakeredis and on a real Redis."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chatkit.store import NotFoundError, StoreItemType
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    Attachment,
    FileAttachment,
    ImageAttachment,
    InferenceOptions,
    LockedStatus,
    Page,
    ThreadItem,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from pydantic import AnyUrl
from redis.asyncio import Redis

from service import keys
from service.context import RequestContext
from service.store import MAX_RECORD_BYTES, RecordTooLarge, RedisStore

RETENTION = 3600
OWNER = RequestContext("acme", "v_owner", "https://acme.example", RETENTION)
OWNER_IDS = (OWNER.tenant_id, OWNER.visitor_id)
STRANGERS = [
    pytest.param(RequestContext("acme", "v_other", "https://acme.example", RETENTION), id="other-visitor"),
    pytest.param(RequestContext("globex", "v_owner", "https://globex.example", RETENTION), id="other-tenant"),
]
BOTH_ORDERS = [pytest.param("asc", id="asc"), pytest.param("desc", id="desc")]
NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)

Op = Callable[[RedisStore, "Owned", RequestContext], Awaitable[object]]


@dataclass(frozen=True)
class Owned:
    thread_id: str
    item_id: str
    attachment_id: str


@pytest.fixture
def store(any_redis: Redis) -> RedisStore:
    return RedisStore(any_redis)


@pytest.fixture
async def owned(store: RedisStore) -> Owned:
    """The owner's thread with one item, and one attachment."""
    thread = await new_thread(store)
    [item_id] = await add_messages(store, thread.id, 1)
    await store.save_attachment(file_attachment("atc_owned"), OWNER)
    return Owned(thread.id, item_id, "atc_owned")


async def new_thread(store: RedisStore, title: str | None = None) -> ThreadMetadata:
    thread = ThreadMetadata(id=store.generate_thread_id(OWNER), created_at=NOW, title=title)
    await store.save_thread(thread, OWNER)
    return thread


def message(item_id: str, thread_id: str, text: str = "hello", created_at: datetime = NOW) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id, thread_id=thread_id, created_at=created_at, content=[AssistantMessageContent(text=text)]
    )


async def add_messages(store: RedisStore, thread_id: str, count: int) -> list[str]:
    """Add ``count`` messages, each stamped earlier than the last, so only the store's sequence orders them."""
    item_ids = [f"msg_{n}" for n in range(count)]
    for n, item_id in enumerate(item_ids):
        await store.add_thread_item(thread_id, message(item_id, thread_id, created_at=NOW - timedelta(n)), OWNER)
    return item_ids


def file_attachment(attachment_id: str) -> FileAttachment:
    return FileAttachment(id=attachment_id, name="report.pdf", mime_type="application/pdf")


async def walk(load: Callable[[str | None], Awaitable[Page[Any]]]) -> list[list[str]]:
    """Follow the cursors from the first page to the last, checking each page's cursor on the way."""
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await load(after)
        pages.append([record.id for record in page.data])
        if not page.has_more:
            assert page.after is None
            return pages
        assert page.after == pages[-1][-1]
        after = page.after


def thread_keys(thread_id: str) -> list[str]:
    scope = (*OWNER_IDS, thread_id)
    return [keys.thread(*scope), keys.thread_items(*scope), keys.thread_item_data(*scope), keys.thread_sequence(*scope)]


def index_keys() -> list[str]:
    return [keys.visitor_threads(*OWNER_IDS), keys.visitor_sequence(*OWNER_IDS)]


async def snapshot(redis: Redis) -> dict[str | bytes, object]:
    """Every key and its value (TTLs aside), to show an operation changed nothing."""
    state: dict[str | bytes, object] = {}
    for key in sorted(await redis.keys("*")):
        kind = await redis.type(key)
        if kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[key] = await redis.hgetall(key)
        else:
            state[key] = await redis.get(key)
    return state


async def test_thread_round_trips(store: RedisStore) -> None:
    thread = ThreadMetadata(
        id=store.generate_thread_id(OWNER),
        created_at=NOW,
        title="Shipping",
        status=LockedStatus(reason="resolved"),
        metadata={"page": "/pricing"},
    )
    await store.save_thread(thread, OWNER)
    assert await store.load_thread(thread.id, OWNER) == thread


async def test_unknown_thread_is_not_found(store: RedisStore) -> None:
    with pytest.raises(NotFoundError):
        await store.load_thread("thr_missing", OWNER)


async def test_saving_a_thread_again_updates_it_in_place(store: RedisStore) -> None:
    first, second = await new_thread(store, "first"), await new_thread(store, "second")
    await store.save_thread(first.model_copy(update={"title": "renamed"}), OWNER)
    page = await store.load_threads(10, None, "asc", OWNER)
    assert [(thread.id, thread.title) for thread in page.data] == [(first.id, "renamed"), (second.id, "second")]


@pytest.mark.parametrize("order", BOTH_ORDERS)
async def test_threads_page_by_cursor_in_both_orders(store: RedisStore, order: str) -> None:
    ids = [(await new_thread(store)).id for _ in range(5)]
    expected = ids if order == "asc" else ids[::-1]
    pages = await walk(lambda after: store.load_threads(2, after, order, OWNER))
    assert pages == [expected[0:2], expected[2:4], expected[4:]]


@pytest.mark.parametrize("order", BOTH_ORDERS)
async def test_items_page_by_cursor_in_both_orders(store: RedisStore, order: str) -> None:
    thread = await new_thread(store)
    ids = await add_messages(store, thread.id, 4)
    expected = ids if order == "asc" else ids[::-1]
    pages = await walk(lambda after: store.load_thread_items(thread.id, after, 2, order, OWNER))
    assert pages == [expected[0:2], expected[2:4]]


@pytest.mark.parametrize(
    ("limit", "size"),
    [pytest.param(0, 1, id="zero"), pytest.param(-3, 1, id="negative"), pytest.param(1000, 100, id="huge")],
)
async def test_page_size_is_clamped(store: RedisStore, limit: int, size: int) -> None:
    thread = await new_thread(store)
    await add_messages(store, thread.id, 101)
    page = await store.load_thread_items(thread.id, None, limit, "asc", OWNER)
    assert len(page.data) == size
    assert page.has_more


async def test_unknown_cursor_is_not_found(store: RedisStore) -> None:
    thread = await new_thread(store)
    await add_messages(store, thread.id, 2)
    with pytest.raises(NotFoundError):
        await store.load_thread_items(thread.id, "msg_gone", 10, "asc", OWNER)
    with pytest.raises(NotFoundError):
        await store.load_threads(10, "thr_gone", "desc", OWNER)


async def test_unknown_order_is_refused(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="asc"):
        await store.load_threads(10, None, "newest", OWNER)


async def test_item_round_trips(store: RedisStore) -> None:
    thread = await new_thread(store)
    item = UserMessageItem(
        id=store.generate_item_id("message", thread, OWNER),
        thread_id=thread.id,
        created_at=NOW,
        content=[UserMessageTextContent(text="Where is my order?")],
        attachments=[file_attachment("atc_1")],
        inference_options=InferenceOptions(),
    )
    await store.add_thread_item(thread.id, item, OWNER)
    assert await store.load_item(thread.id, item.id, OWNER) == item
    with pytest.raises(NotFoundError):
        await store.load_item(thread.id, "msg_missing", OWNER)


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(RedisStore.save_item, id="save_item"),
        pytest.param(RedisStore.add_thread_item, id="add_thread_item"),
    ],
)
async def test_writing_an_item_again_keeps_its_place(
    store: RedisStore, write: Callable[[RedisStore, str, ThreadItem, RequestContext], Awaitable[None]]
) -> None:
    thread = await new_thread(store)
    first, second, third = await add_messages(store, thread.id, 3)
    await write(store, thread.id, message(second, thread.id, "edited"), OWNER)
    await write(store, thread.id, message("msg_new", thread.id), OWNER)
    page = await store.load_thread_items(thread.id, None, 10, "asc", OWNER)
    assert [item.id for item in page.data] == [first, second, third, "msg_new"]
    assert page.data[1] == message(second, thread.id, "edited")


async def test_deleting_an_item_removes_only_it(store: RedisStore) -> None:
    thread = await new_thread(store)
    first, second, third = await add_messages(store, thread.id, 3)
    await store.delete_thread_item(thread.id, second, OWNER)
    await store.delete_thread_item(thread.id, second, OWNER)
    page = await store.load_thread_items(thread.id, None, 10, "asc", OWNER)
    assert [item.id for item in page.data] == [first, third]
    with pytest.raises(NotFoundError):
        await store.load_item(thread.id, second, OWNER)


async def test_deleting_a_thread_leaves_no_key_behind(any_redis: Redis, store: RedisStore) -> None:
    doomed, kept = await new_thread(store), await new_thread(store)
    await add_messages(store, doomed.id, 3)
    await add_messages(store, kept.id, 1)
    await store.delete_thread(doomed.id, OWNER)
    assert [key for key in await any_redis.keys("*") if doomed.id in key] == []
    assert await any_redis.zscore(keys.visitor_threads(*OWNER_IDS), doomed.id) is None
    assert [thread.id for thread in (await store.load_threads(10, None, "asc", OWNER)).data] == [kept.id]
    with pytest.raises(NotFoundError):
        await store.load_thread_items(doomed.id, None, 10, "asc", OWNER)
    assert len((await store.load_thread_items(kept.id, None, 10, "asc", OWNER)).data) == 1


async def test_writing_into_a_missing_thread_is_not_found(any_redis: Redis, store: RedisStore) -> None:
    with pytest.raises(NotFoundError):
        await store.add_thread_item("thr_missing", message("msg_1", "thr_missing"), OWNER)
    with pytest.raises(NotFoundError):
        await store.save_item("thr_missing", message("msg_1", "thr_missing"), OWNER)
    assert await any_redis.keys("*") == []


@pytest.mark.parametrize(
    "attachment",
    [
        pytest.param(file_attachment("atc_file"), id="file"),
        pytest.param(
            ImageAttachment(id="atc_img", name="a.png", mime_type="image/png", preview_url=AnyUrl("https://x.test/a")),
            id="image",
        ),
    ],
)
async def test_attachment_round_trips_and_deletes(store: RedisStore, attachment: Attachment) -> None:
    await store.save_attachment(attachment, OWNER)
    assert await store.load_attachment(attachment.id, OWNER) == attachment
    await store.delete_attachment(attachment.id, OWNER)
    with pytest.raises(NotFoundError):
        await store.load_attachment(attachment.id, OWNER)
    await store.delete_attachment(attachment.id, OWNER)


def assert_fresh_id(first: str, second: str, prefix: str) -> None:
    assert re.fullmatch(rf"{prefix}_[0-9a-f]{{32}}", first)
    assert first != second


async def test_thread_ids_keep_chatkit_prefix_and_carry_128_random_bits(store: RedisStore) -> None:
    assert_fresh_id(store.generate_thread_id(OWNER), store.generate_thread_id(OWNER), "thr")


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        pytest.param("message", "msg", id="message"),
        pytest.param("tool_call", "tc", id="tool_call"),
        pytest.param("workflow", "wf", id="workflow"),
        pytest.param("task", "tsk", id="task"),
        pytest.param("sdk_hidden_context", "shcx", id="sdk_hidden_context"),
    ],
)
async def test_item_ids_keep_chatkit_prefixes_and_carry_128_random_bits(
    store: RedisStore, kind: StoreItemType, prefix: str
) -> None:
    thread = ThreadMetadata(id="thr_1", created_at=NOW)
    assert_fresh_id(store.generate_item_id(kind, thread, OWNER), store.generate_item_id(kind, thread, OWNER), prefix)


DENIED: list[Any] = [
    pytest.param(lambda s, o, c: s.load_thread(o.thread_id, c), id="load_thread"),
    pytest.param(lambda s, o, c: s.load_thread_items(o.thread_id, None, 10, "asc", c), id="load_thread_items"),
    pytest.param(lambda s, o, c: s.load_item(o.thread_id, o.item_id, c), id="load_item"),
    pytest.param(lambda s, o, c: s.load_attachment(o.attachment_id, c), id="load_attachment"),
    pytest.param(lambda s, o, c: s.add_thread_item(o.thread_id, message("msg_x", o.thread_id), c), id="add_item"),
    pytest.param(lambda s, o, c: s.save_item(o.thread_id, message(o.item_id, o.thread_id, "x"), c), id="save_item"),
]
IGNORED: list[Any] = [
    pytest.param(lambda s, o, c: s.delete_thread(o.thread_id, c), id="delete_thread"),
    pytest.param(lambda s, o, c: s.delete_thread_item(o.thread_id, o.item_id, c), id="delete_thread_item"),
    pytest.param(lambda s, o, c: s.delete_attachment(o.attachment_id, c), id="delete_attachment"),
]


@pytest.mark.parametrize("stranger", STRANGERS)
@pytest.mark.parametrize("op", DENIED)
async def test_a_stranger_finds_nothing_of_the_owner(
    any_redis: Redis, store: RedisStore, owned: Owned, stranger: RequestContext, op: Op
) -> None:
    before = await snapshot(any_redis)
    with pytest.raises(NotFoundError):
        await op(store, owned, stranger)
    assert await snapshot(any_redis) == before


@pytest.mark.parametrize("stranger", STRANGERS)
@pytest.mark.parametrize("op", IGNORED)
async def test_a_strangers_delete_changes_nothing(
    any_redis: Redis, store: RedisStore, owned: Owned, stranger: RequestContext, op: Op
) -> None:
    before = await snapshot(any_redis)
    await op(store, owned, stranger)
    assert await snapshot(any_redis) == before
    assert (await store.load_item(owned.thread_id, owned.item_id, OWNER)).id == owned.item_id
    assert (await store.load_attachment(owned.attachment_id, OWNER)).id == owned.attachment_id


@pytest.mark.parametrize("stranger", STRANGERS)
async def test_a_stranger_lists_no_threads(store: RedisStore, owned: Owned, stranger: RequestContext) -> None:
    assert (await store.load_threads(10, None, "desc", stranger)).data == []
    assert [thread.id for thread in (await store.load_threads(10, None, "desc", OWNER)).data] == [owned.thread_id]


async def test_writes_set_the_retention_ttl(any_redis: Redis, store: RedisStore, owned: Owned) -> None:
    written = [*thread_keys(owned.thread_id), *index_keys(), keys.attachment(*OWNER_IDS, owned.attachment_id)]
    for key in written:
        assert 0 < await any_redis.ttl(key) <= RETENTION, key


REFRESHING: list[Any] = [
    pytest.param(lambda s, o, c: s.save_thread(ThreadMetadata(id=o.thread_id, created_at=NOW), c), id="save_thread"),
    pytest.param(lambda s, o, c: s.add_thread_item(o.thread_id, message("msg_x", o.thread_id), c), id="add_item"),
    pytest.param(lambda s, o, c: s.save_item(o.thread_id, message(o.item_id, o.thread_id, "x"), c), id="save_item"),
    pytest.param(lambda s, o, c: s.delete_thread_item(o.thread_id, "msg_other", c), id="delete_thread_item"),
]


@pytest.mark.parametrize("op", REFRESHING)
async def test_thread_writes_refresh_the_ttl(any_redis: Redis, store: RedisStore, owned: Owned, op: Op) -> None:
    touched = [*thread_keys(owned.thread_id), *index_keys()]
    for key in touched:
        await any_redis.expire(key, 5)
    await op(store, owned, OWNER)
    for key in touched:
        assert 5 < await any_redis.ttl(key) <= RETENTION, key


async def test_saving_an_attachment_refreshes_the_visitors_ttl(any_redis: Redis, store: RedisStore) -> None:
    await new_thread(store)
    for key in index_keys():
        await any_redis.expire(key, 5)
    await store.save_attachment(file_attachment("atc_1"), OWNER)
    for key in [*index_keys(), keys.attachment(*OWNER_IDS, "atc_1")]:
        assert 5 < await any_redis.ttl(key) <= RETENTION, key


async def test_listing_skips_and_forgets_expired_threads(any_redis: Redis, store: RedisStore) -> None:
    first, expired, third, fourth = [await new_thread(store) for _ in range(4)]
    await any_redis.delete(keys.thread(*OWNER_IDS, expired.id))
    pages = await walk(lambda after: store.load_threads(2, after, "asc", OWNER))
    assert pages == [[first.id, third.id], [fourth.id]]
    assert await any_redis.zscore(keys.visitor_threads(*OWNER_IDS), expired.id) is None


@pytest.mark.parametrize(
    ("text_bytes", "accepted"),
    [pytest.param(MAX_RECORD_BYTES - 1024, True, id="under"), pytest.param(MAX_RECORD_BYTES, False, id="over")],
)
async def test_items_over_the_size_limit_are_refused(store: RedisStore, text_bytes: int, accepted: bool) -> None:
    thread = await new_thread(store)
    item = message("msg_big", thread.id, "x" * text_bytes)
    if accepted:
        await store.add_thread_item(thread.id, item, OWNER)
    else:
        with pytest.raises(RecordTooLarge):
            await store.add_thread_item(thread.id, item, OWNER)
    page = await store.load_thread_items(thread.id, None, 10, "asc", OWNER)
    assert len(page.data) == (1 if accepted else 0)
