"""The table of shapes (nixmig/nixsrc/shapes): each shape is one module, named once, shown by cases."""

from __future__ import annotations

import json

from nixmig.nixsrc.shapes import SHAPES
from tests.helpers import FIXTURES


def test_every_shape_is_named_once_and_shown_by_a_case_of_the_corpus() -> None:
    names = [s.name for s in SHAPES]
    assert len(names) == len(set(names))
    for shape in SHAPES:
        assert shape.cases, shape.name
        for case in shape.cases:
            meta = json.loads((FIXTURES / "shapes" / case / "case.json").read_text())
            assert meta["expect"] in ("patched", "refused"), case
    assert any(
        json.loads((FIXTURES / "shapes" / c / "case.json").read_text())["expect"] == "patched"
        for s in SHAPES
        for c in s.cases
    )
