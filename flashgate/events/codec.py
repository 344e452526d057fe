"""Strict encode/decode for wire types: size limit first, then msgspec's typed decoder.

One :class:`Codec` per type (or tagged union), built once. ``decode`` never raises anything
but :class:`OversizedInput` (checked before parsing) or :class:`MalformedMessage` (with
msgspec's path, e.g. ``at `$.items[3].digest```). Nothing is half-applied: a message either
decodes completely into its type or not at all.

``decode_accepted`` is for bytes ``decode`` accepted before, these very bytes, which the
caller knows by an authenticated fingerprint (a node's proven-value memo,
:mod:`flashgate.bridge.verified_statements`): it decodes them into the same types with
their constraints (patterns, lengths, ranges) not checked again. The patterns were about
four fifths of an envelope's decode (6.7 µs against 1.3 µs), and a node decodes every
envelope it holds at every start. Never the way to read bytes not known accepted.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Collection
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from flashgate.errors import MalformedMessage, OversizedInput

T = TypeVar("T")
Format = Literal["json", "msgpack"]


def unconstrained(type_: Any, keep: Collection[type] = ()) -> Any:
    """``type_`` with every constraint (``Annotated[..., Meta(...)]``) dropped, through
    unions and struct fields: each struct type becomes a subclass of itself whose fields
    are declared without their constraints (an instance still *is* the struct type; its
    fields, names, defaults and options are the same). Struct types in ``keep`` stay as
    they are (msgspec compares structs by exact type: one compared with another instance
    of its type must stay that type)."""
    if typing.get_origin(type_) is Annotated:
        return unconstrained(typing.get_args(type_)[0], keep)
    if isinstance(type_, types.UnionType) or typing.get_origin(type_) is typing.Union:
        args = tuple(unconstrained(arg, keep) for arg in typing.get_args(type_))
        return functools.reduce(lambda a, b: a | b, args)
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct) and type_ not in keep:
        return _unconstrained_struct(type_, frozenset(keep))
    return type_


@functools.cache
def _unconstrained_struct(struct: type[msgspec.Struct], keep: frozenset[type]) -> Any:
    fields: list[Any] = []
    infos = msgspec.structs.fields(struct)
    renamed = {i.name: i.encode_name for i in infos if i.encode_name != i.name}
    for info in infos:
        plain = unconstrained(info.type, keep)
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, plain, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, plain, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, plain))
    config = struct.__struct_config__
    return msgspec.defstruct(
        f"Accepted{struct.__name__}",
        fields,
        bases=(struct,),
        module=struct.__module__,
        frozen=config.frozen,
        kw_only=True,  # every field is named when decoded; only the positional order differs
        forbid_unknown_fields=config.forbid_unknown_fields,
        omit_defaults=config.omit_defaults,
        rename=renamed or None,
        tag=config.tag,
        tag_field=config.tag_field,
        array_like=config.array_like,
        gc=config.gc,
        eq=config.eq,
        order=config.order,
        repr_omit_defaults=config.repr_omit_defaults,
    )


class Codec(Generic[T]):
    def __init__(
        self,
        type_: Any,
        *,
        max_bytes: int,
        fmt: Format = "json",
        what: str,
        keep_exact: Collection[type] = (),
    ) -> None:
        """``keep_exact``: struct types :meth:`decode_accepted` makes as they are
        (:func:`unconstrained`)."""
        self.type = type_
        self.max_bytes = max_bytes
        self.fmt = fmt
        self.what = what
        self._keep_exact = tuple(keep_exact)
        self._accepted_decoder: Any = None
        if fmt == "json":
            self._decoder: Any = msgspec.json.Decoder(type_)
            self._encoder: Any = msgspec.json.Encoder()
        else:
            self._decoder = msgspec.msgpack.Decoder(type_)
            self._encoder = msgspec.msgpack.Encoder()

    def decode_accepted(self, data: bytes | bytearray | memoryview) -> T:
        """``data`` that :meth:`decode` accepted before (module docs), decoded without its
        constraints checked again; the errors as :meth:`decode`'s, should it not decode."""
        decoder = self._accepted_decoder
        if decoder is None:
            plain = unconstrained(self.type, self._keep_exact)
            module = msgspec.json if self.fmt == "json" else msgspec.msgpack
            decoder = self._accepted_decoder = module.Decoder(plain)
        return self._decode(decoder, data)

    def decode(self, data: bytes | bytearray | memoryview) -> T:
        return self._decode(self._decoder, data)

    def _decode(self, decoder: Any, data: bytes | bytearray | memoryview) -> T:
        if len(data) > self.max_bytes:
            raise OversizedInput(f"{self.what} of {len(data)} bytes is over {self.max_bytes}")
        try:
            return decoder.decode(data)  # type: ignore[no-any-return]
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
