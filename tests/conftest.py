"""Test tiers by directory: tests/unit -> unit, tests/integration -> integration, tests/e2e -> e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

_TIERS = ("unit", "integration", "e2e")
_ROOT = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.path)).relative_to(_ROOT)
        tier = rel.parts[0]
        if tier not in _TIERS:
            raise pytest.UsageError(f"{rel}: tests live under tests/unit, tests/integration or tests/e2e")
        item.add_marker(getattr(pytest.mark, tier))
