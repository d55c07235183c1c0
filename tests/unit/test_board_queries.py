"""The board's query checks and the client's Server-Sent Events parser: pure logic, no server."""

from __future__ import annotations

import asyncio

import pytest

from popscore.stream.board.queries import BadQuery, describe_board, parse_k, parse_post_ids
from popscore.tools.client import sse_events


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "101", "99999999999999999999", "1.5", "", " ", "1e3", "+3",
                                 "٣"])
def test_a_bad_k_is_refused_with_the_allowed_range(raw):
    with pytest.raises(BadQuery, match="k must be .*1 to 100"):
        parse_k(raw, board_size=100)


@pytest.mark.parametrize("raw, k", [(None, 10), ("1", 1), ("100", 100), ("007", 7), (" 5 ", 5)])
def test_a_good_k_is_read(raw, k):
    assert parse_k(raw, board_size=100) == k


def test_the_default_k_is_at_most_the_board_size():
    assert parse_k(None, board_size=3) == 3


@pytest.mark.parametrize("post_ids, message", [([], "at least one"), (None, "at least one"), ("abc", "at least one"),
                                               (["a", ""], "non-empty"), (["a", 3], "non-empty"),
                                               ([f"p{i}" for i in range(4)], "at most 3 post ids")])
def test_bad_post_id_lists_are_refused(post_ids, message):
    with pytest.raises(BadQuery, match=message):
        parse_post_ids(post_ids, limit=3)


def test_post_ids_keep_their_order_without_duplicates():
    assert parse_post_ids(["b", "a", "b"], limit=3) == ["b", "a"]


def test_boards_are_described_by_what_they_rank():
    assert describe_board("top")["kind"] == "top"
    assert describe_board("rising")["ranks_by"].startswith("log-score growth")
    assert describe_board("top:platform:reddit") == {"name": "top:platform:reddit", "kind": "platform",
                                                     "platform": "reddit", "ranks_by": "predicted score at the horizon"}
    assert describe_board("top:category:a:b")["category"] == "a:b"


def test_sse_events_are_parsed_and_keepalives_skipped():
    stream = [b": keepalive\n", b"\n", b"event: board\n", b"data: {\"a\": 1}\n", b"\n", b"data: one\r\n",
              b"data:two\n", b"\n", b"event: prediction\n", b"data: x\n"]  # the last event is incomplete

    async def lines():
        for line in stream:
            yield line

    async def collect():
        return [event async for event in sse_events(lines())]

    assert asyncio.run(collect()) == [("board", '{"a": 1}'), ("message", "one\ntwo")]
