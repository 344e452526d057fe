"""Strict encode/decode for wire types: size limit first, then msgspec's typed decoder.

One :class:`Codec` per type (or tagged union), built once. ``decode`` never raises anything
but :class:`OversizedInput` (checked before parsing) or :class:`MalformedMessage` (with
msgspec's path, e.g. ``at `$.items[3].digest```). Nothing is half-applied: a message either
decodes completely into its type or not at all.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

from flashgate.errors import MalformedMessage, OversizedInput

T = TypeVar("T")
Format = Literal["json", "msgpack"]


class Codec(Generic[T]):
    def __init__(self, type_: Any, *, max_bytes: int, fmt: Format = "json", what: str) -> None:
        self.type = type_
        self.max_bytes = max_bytes
        self.fmt = fmt
        self.what = what
        if fmt == "json":
            self._decoder: Any = msgspec.json.Decoder(type_)
            self._encoder: Any = msgspec.json.Encoder()
        else:
            self._decoder = msgspec.msgpack.Decoder(type_)
            self._encoder = msgspec.msgpack.Encoder()

    def decode(self, data: bytes | bytearray | memoryview) -> T:
        if len(data) > self.max_bytes:
            raise OversizedInput(f"{self.what} of {len(data)} bytes is over {self.max_bytes}")
        try:
            return self._decoder.decode(data)  # type: ignore[no-any-return]
        except msgspec.ValidationError as exc:
            raise MalformedMessage(f"invalid {self.what}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise MalformedMessage(f"{self.what} is not valid {self.fmt}: {exc}") from exc
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise MalformedMessage(f"invalid {self.what}: {type(exc).__name__}") from exc

    def encode(self, value: T) -> bytes:
        data: bytes = self._encoder.encode(value)
        if len(data) > self.max_bytes:
            raise OversizedInput(f"{self.what} of {len(data)} bytes is over {self.max_bytes}")
        return data
