"""nixmig.target's pure part: when a journal's target is another one, and what a run learns."""

from __future__ import annotations

from nixmig.target import Identity, compare, learn

REC = {"host": "ssh-ed25519 SHA256:aaa", "clusters": ["111"], "container": "db-1", "container_ids": ["c" * 64]}


def rec() -> dict[str, object]:
    return {k: list(v) if isinstance(v, list) else v for k, v in REC.items()}


def test_same_target() -> None:
    assert compare(rec(), Identity("ssh-ed25519 SHA256:aaa", "111", "db-1", "c" * 64)) == (None, None)


def test_another_cluster_or_host_is_refused() -> None:
    refusal, _ = compare(rec(), Identity("ssh-ed25519 SHA256:aaa", "222", "db-1", "c" * 64))
    assert refusal == "the cluster's system_identifier is 222, the journal's run was on 111"
    refusal, _ = compare(rec(), Identity("ssh-ed25519 SHA256:bbb", "111", "db-1", "c" * 64))
    assert refusal == "the host's key is ssh-ed25519 SHA256:bbb, the journal's run was on ssh-ed25519 SHA256:aaa"


def test_container_recreated_on_the_same_cluster_is_the_same_target() -> None:
    now = Identity("ssh-ed25519 SHA256:aaa", "111", "db-1", "d" * 64)
    refusal, note = compare(rec(), now)
    assert refusal is None and note is not None and "re-created" in note and "dddddddddddd" in note
    r = rec()
    assert learn(r, now) and r["container_ids"] == ["c" * 64, "d" * 64] and not learn(r, now)


def test_another_container_is_refused() -> None:
    refusal, _ = compare(rec(), Identity("ssh-ed25519 SHA256:aaa", "111", "db-clone", "e" * 64))
    assert refusal is not None and "the container is db-clone (eeeeeeeeeeee), the journal's was db-1" in refusal


def test_learn_never_takes_another_host_or_container() -> None:
    r = rec()
    assert not learn(r, Identity("ssh-ed25519 SHA256:bbb", "222", "db-1", None))
    assert not learn(r, Identity("ssh-ed25519 SHA256:aaa", "222", "db-2", None))
    assert learn(r, Identity("ssh-ed25519 SHA256:aaa", "222", "db-1", None)) and r["clusters"] == ["111", "222"]
