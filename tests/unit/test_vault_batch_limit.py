"""The Vault provider's request size, learned from refusals (pure: no server).

The real server's refusals are tested against OpenBao in tests/integration/test_vault_openbao.py."""

from __future__ import annotations

from nixmig.reencrypt.keys import _BatchLimit


def simulate(limit: _BatchLimit, accepts: int, items: int) -> tuple[list[int], list[int]]:
    """Send ``items`` through ``limit`` to a server taking at most ``accepts`` per request."""
    sent, refused = [], []
    i = 0
    while i < items:
        n = limit.size(items - i)
        if n > accepts:
            refused.append(n)
            limit.refused(n)
            continue
        sent.append(n)
        limit.accepted(n)
        i += n
    return sent, refused


def test_no_refusal_sends_everything_at_once_or_by_the_cap() -> None:
    assert simulate(_BatchLimit(None), 10_000, 3000) == ([3000], [])
    sent, refused = simulate(_BatchLimit(64), 10_000, 1000)
    assert refused == [] and sent == [64] * 15 + [40]


def test_refusals_halve_then_bisect_and_settle_close_to_the_limit() -> None:
    limit = _BatchLimit(None)
    _, refused = simulate(limit, 199, 3000)
    assert refused[:3] == [3000, 1500, 750] and len(refused) <= 8
    assert limit.settled() and 199 - 199 // 16 <= limit.size(10_000) <= 199
    # later batches go straight to the learned size: no refusal again
    again, refused_again = simulate(limit, 199, 1000)
    assert refused_again == [] and max(again) == limit.size(10_000)


def test_a_limit_that_goes_down_is_learned_again() -> None:
    limit = _BatchLimit(None)
    simulate(limit, 199, 2000)
    sent, refused = simulate(limit, 50, 500)
    assert refused and max(sent) <= 50 and sum(sent) == 500


def test_one_item_is_the_floor() -> None:
    limit = _BatchLimit(None)
    for n in (8, 4, 2):
        assert limit.size(8) == n
        limit.refused(n)
    assert limit.size(8) == 1
