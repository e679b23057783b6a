"""What a visitor's requests must pass before Perch spends anything, and what a chat turn settles after.

A chat turn goes through three steps, each on Redis so every replica agrees:

    admit()    a stream slot, then the visitor's and the tenant's message rates   before the stream starts
    reserve()  the day's token budgets, for the turn's worst case                 before the model is called
    close()    settle the budget with the usage the model reported; free the slot  however the stream ends

Each refusal carries the sentence the visitor sees. Redis errors are not caught here: a request
that cannot get a decision fails closed as a 503.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
from agents import Usage
from redis.asyncio import Redis

from service import keys
from service.budget import Reservation, TokenBudget
from service.context import RequestContext
from service.errors import TooManyRequests
from service.ratelimit import Decision, Limit, RateLimiter
from service.streams import StreamSlots
from service.tenants import Tenant

log = logging.getLogger("perch")

CLOSE_SECONDS = 5.0
# A stream slot outlives the longest allowed reply by this much before it frees itself.
SLOT_MARGIN_SECONDS = 60.0
# UTF-8 bytes over three: a little above the real count for English, close for CJK.
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8


class TurnRefused(Exception):
    """A chat turn that may not go ahead, with what to tell the visitor."""

    def __init__(self, message: str, retry_after: float | None = None, *, allow_retry: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.allow_retry = allow_retry


def in_seconds(seconds: float) -> str:
    """Say a wait the way people read it: "12 s" up to a minute and a half, then whole minutes."""
    whole = max(1, math.ceil(seconds))
    return f"{whole} s" if whole <= 90 else f"{math.ceil(whole / 60)} min"


REFUSALS = {
    "visitor_messages": "You're sending messages quickly — try again in {wait}.",
    "tenant_messages": "This assistant is very busy right now — try again in {wait}.",
}
STREAMS_BUSY = "A reply is still on its way — let it finish, then send your next message."
OUT_OF_TOKENS = "This chat has reached today's usage limit — please try again tomorrow."
TOO_MANY_REQUESTS = "Too many requests from this chat — try again in {wait}."
TOO_MANY_SESSIONS = "Too many new chats from your network — try again in {wait}."


def estimate_tokens(text: str) -> int:
    """Return a generous estimate of how many tokens a text costs, without a tokenizer."""
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def estimate_input_tokens(instructions: str, items: Sequence[object]) -> int:
    """Estimate a model call's input: the system prompt and every history item, with per-message overhead."""
    history = sum(estimate_tokens(json.dumps(item, default=str, ensure_ascii=False)) for item in items)
    return estimate_tokens(instructions) + history + TOKENS_PER_MESSAGE * (len(items) + 1)


class Guards:
    """The limiter, stream slots and budgets, shared by every request of the app."""

    def __init__(self, redis: Redis, *, longest_reply_seconds: float) -> None:
        self.limiter = RateLimiter(redis)
        self.slots = StreamSlots(redis, ttl_seconds=longest_reply_seconds + SLOT_MARGIN_SECONDS)
        self.budget = TokenBudget(redis)

    async def check_session(self, tenant: Tenant, client_network: str) -> None:
        """Spend one new session from this client address, or raise a 429."""
        rate = tenant.limits.sessions_per_ip.rate()
        decision = await self.limiter.acquire(Limit(keys.session_rate(tenant.id, client_network), rate, "sessions"))
        _raise_if_refused(decision, TOO_MANY_SESSIONS)

    async def check_request(self, tenant: Tenant, context: RequestContext) -> None:
        """Spend one of the visitor's requests that start no reply (lists, renames, …), or raise a 429."""
        rate = tenant.limits.visitor_requests.rate()
        key = keys.visitor_request_rate(tenant.id, context.visitor_id)
        _raise_if_refused(await self.limiter.acquire(Limit(key, rate, "visitor_requests")), TOO_MANY_REQUESTS)

    def turn(self, tenant: Tenant, context: RequestContext) -> Turn:
        return Turn(self, tenant, context)


def _raise_if_refused(decision: Decision, message: str) -> None:
    if not decision.allowed:
        raise TooManyRequests(message.format(wait=in_seconds(decision.retry_after)), retry_after=decision.retry_after)


class Turn:
    """One streaming request's hold on the visitor's and tenant's limits, from admission to the stream's end."""

    def __init__(self, guards: Guards, tenant: Tenant, context: RequestContext) -> None:
        self.guards, self.tenant, self.context = guards, tenant, context
        self._slot_key = keys.visitor_streams(tenant.id, context.visitor_id)
        self._slot: str | None = None
        self._reservation: Reservation | None = None
        self._estimated_input = 0
        self._used: tuple[int, int] | None = None
        self._closed = False

    async def admit(self) -> None:
        """Take a stream slot and one message of each rate, or raise TurnRefused holding nothing."""
        limits = self.tenant.limits
        self._slot = await self.guards.slots.acquire(self._slot_key, limits.concurrent_streams)
        if self._slot is None:
            raise TurnRefused(STREAMS_BUSY)
        visitor_key = keys.visitor_message_rate(self.tenant.id, self.context.visitor_id)
        try:
            decision = await self.guards.limiter.acquire(
                Limit(visitor_key, limits.visitor_messages.rate(), "visitor_messages"),
                Limit(keys.tenant_message_rate(self.tenant.id), limits.tenant_messages.rate(), "tenant_messages"),
            )
        except BaseException:
            await self.close()  # Redis failed or the request was cancelled: give the slot back now
            raise
        if not decision.allowed:
            await self.close()
            message = REFUSALS[decision.limit or "visitor_messages"]
            raise TurnRefused(message.format(wait=in_seconds(decision.retry_after)), decision.retry_after)

    async def reserve(self, input_tokens: int, max_output_tokens: int) -> None:
        """Hold the turn's worst case against today's budgets, or raise TurnRefused."""
        limits = self.tenant.limits
        self._estimated_input = input_tokens
        self._reservation = await self.guards.budget.reserve(
            self.tenant.id,
            self.context.visitor_id,
            input_tokens + max_output_tokens,
            tenant_daily=limits.tenant_daily_tokens,
            visitor_daily=limits.visitor_daily_tokens,
        )
        if self._reservation is None:
            # Nothing to retry before the budget renews at midnight UTC.
            raise TurnRefused(OUT_OF_TOKENS, _seconds_to_midnight(), allow_retry=False)

    def record(self, usage: Usage, streamed_text: str) -> None:
        """Note what the call cost: the model's own count, else an estimate of what it streamed."""
        if usage.input_tokens or usage.output_tokens:
            self._used = (usage.input_tokens, usage.output_tokens)
        elif streamed_text.strip():
            self._used = (self._estimated_input, estimate_tokens(streamed_text))

    async def close(self) -> None:
        """Settle the budget (or give the reservation back when nothing was spent) and free the slot."""
        if self._closed:
            return
        self._closed = True
        # Runs after a disconnect or at shutdown too: shield the writes, within a bound.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SECONDS):
            try:
                if self._reservation is not None and self._used is not None:
                    await self.guards.budget.settle(self._reservation, *self._used)
                elif self._reservation is not None:
                    await self.guards.budget.release(self._reservation)
            except Exception:
                log.warning("tenant %s: could not settle a token reservation", self.tenant.id, exc_info=True)
            try:
                if self._slot is not None:
                    await self.guards.slots.release(self._slot_key, self._slot)
            except Exception:
                log.warning("tenant %s: could not free a stream slot; it expires by itself", self.tenant.id)


def _seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - now).total_seconds()
