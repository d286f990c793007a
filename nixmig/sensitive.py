"""A value that must never be printed: str/repr are masked, the clear text is explicit."""

from __future__ import annotations

from typing import Final, NoReturn

MASK: Final = "********"


class Secret:
    """Holds a secret value. ``str()``, ``repr()`` and f-strings show a mask.

    Use :meth:`reveal` at the one place the clear text is needed (encryption,
    stdin of a subprocess). Equality compares in constant time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def reveal_str(self) -> str:
        return self._value.decode()

    def __len__(self) -> int:
        return len(self._value)

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        import hmac

        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")
