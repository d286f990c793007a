"""The Nix parser from several threads at once (a fleet's hosts run their phases in threads, each
parsing secrets.nix and the tree): each thread has its own tree-sitter Parser, since py-tree-sitter
releases the GIL while parsing and one Parser is not safe to share."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nixmig.nixsrc import parse

pytestmark = pytest.mark.unit


def test_each_thread_parses_with_a_parser_of_its_own() -> None:
    seen: list[object] = [parse._parser()]  # this thread's first; kept alive (a freed object's id is reused)
    start = threading.Barrier(4)

    def grab() -> None:
        start.wait()  # all four threads alive at once
        seen.append(parse._parser())
        assert parse._parser() is parse._parser()  # one per thread, kept

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in seen}) == 5


def test_parsing_in_parallel_gives_each_source_its_own_tree() -> None:
    sources = [
        (f'{{ a{i} = "{"x" * (i * 37 % 900)}"; b = [ {" ".join(map(str, range(i % 50)))} ]; }}').encode()
        for i in range(400)
    ]

    def one(src: bytes) -> bool:
        tree = parse.parse(src)
        return tree.root_node.text == src and not tree.root_node.has_error

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(one, sources))
