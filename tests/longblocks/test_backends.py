"""The openai backend under a slow request (over real HTTP to the scripted TEST DOUBLE server):
new requests keep going out while one is pending, results still come back in input order, and
only a reorder buffer past its memory bound pauses sending."""

from __future__ import annotations

from longblocks.backends import OpenAIBackend, Sampling
from openai_double import ScriptedServer

PROMPTS = ["[[mode:slow]] the first request takes two seconds"] + [f"[[mode:good]] request {i}" for i in range(40)]


def run(server: ScriptedServer, **options: int) -> tuple[list[str], int]:
    """(items in the order they came back, requests the server had seen when the first came back)."""
    backend = OpenAIBackend("m", base_url=server.base_url, concurrency=4, max_retries=0, timeout=30,
                            sampling=Sampling(max_tokens=32))
    order, seen_at_first = [], None
    for item, completion in backend.map_ordered(PROMPTS, lambda p: [{"role": "user", "content": p}], **options):
        assert completion.error is None and completion.text
        seen_at_first = len(server.prompts) if seen_at_first is None else seen_at_first
        order.append(item)
    backend.close()
    return order, seen_at_first


def test_new_requests_are_sent_while_a_slow_one_is_pending_and_results_keep_input_order() -> None:
    with ScriptedServer(slow_first=2.0) as server:
        order, seen = run(server)
    assert order == PROMPTS
    # every other request went out (4 at a time) and came back during the slow one's two seconds;
    # waiting on the oldest request would have sent only a window of 2 x concurrency = 8 of them
    assert seen == len(PROMPTS)


def test_the_reorder_buffer_is_bounded_by_memory() -> None:
    with ScriptedServer(slow_first=2.0) as server:
        order, seen = run(server, buffer_bytes=10 * len(PROMPTS[1]))  # about ten prompts' worth
    assert order == PROMPTS
    assert seen < 16  # sending paused once the finished results behind the slow one filled the buffer
