"""The permessage-deflate extension (RFC 7692): DEFLATE-compressed messages. No I/O.

:class:`DeflateMessage` is the configuration (one object serves clients and servers, and
every connection that uses it); it negotiates and builds a :class:`DeflateMessageCodec`,
the per-connection zlib state that the Connection layer calls for every data message.

Defaults, and why:

* ``compress_level=6`` (zlib's default, as in python-websockets and Node ``ws``). Measured
  with CPython 3.11 / zlib 1.2.13 on source text and JSON: level 1 is 2-3.5x faster but its
  output is 10-25 % larger; level 9 is 3-4x slower for < 1 % less.
* ``mem_level=5`` instead of zlib's 8 (python-websockets does the same): the compressor
  needs about 144 KiB instead of 256 KiB per connection, for output at most 2 % larger.
* ``threshold=32``: smaller messages are sent uncompressed. Below that size deflating
  saves at most a couple of dozen bytes, far less than the 40+ bytes of TCP/IP headers
  around every packet, and costs ~3 us per message; without context takeover it even
  grows them ("Hello" 5 -> 7 bytes). Sending a message uncompressed is always allowed
  (§6) and doesn't touch the LZ77 window on either side.
* Window bits 15 (32 KiB) unless negotiated lower.
* ``max_compressed_size``: a received message may carry at most ``2 * max_size + 64 KiB``
  compressed bytes (1009 beyond). ``max_size`` bounds what a message inflates to; this
  bounds the work spent on one, even when it inflates to nothing (empty blocks). Real
  data never comes near it: incompressible input grows by 5 bytes per 64 KiB stored block.

Security (§8): compressing secrets together with attacker-controlled data enables
CRIME-style attacks; send such messages with ``compress=False`` or negotiate
``*_no_context_takeover``.
"""

from __future__ import annotations

import logging
import zlib

from .errors import NegotiationError, PayloadTooBig, ProtocolError
from .extension import Extension, ExtensionCodec, Params, format_extensions
from .frame import RSV1

__all__ = ["DeflateMessage", "DeflateMessageCodec", "default_extensions"]

logger = logging.getLogger(__name__)

# The LEN/NLEN of the empty stored block that a sync flush ends with (RFC 7692 §7.2.1):
# the sender strips it, the receiver appends it back (§7.2.2).
_TAIL = b"\x00\x00\xff\xff"

# §7.1.2.1: 1*DIGIT without leading zeros, 8 to 15; exact strings so "08" and "8.0" fail.
WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}

_NO_VALUE = ("server_no_context_takeover", "client_no_context_takeover")

DEFAULT_COMPRESS_LEVEL = 6
DEFAULT_MEM_LEVEL = 5
DEFAULT_THRESHOLD = 32


def compressed_limit(max_compressed_size: int | None, max_size: int | None) -> int | None:
    """The cap on a received message's compressed bytes (None: no cap).

    ``max_compressed_size`` -1 (the default) derives it from the message limit:
    ``2 * max_size + 64 KiB``, or no cap when ``max_size`` is None.
    """
    if max_compressed_size != -1:
        return max_compressed_size
    return None if max_size is None else 2 * max_size + 65536


def check_max_compressed_size(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
        raise ValueError("max_compressed_size must be -1, None or a size >= 0, not %r" % (value,))


def check_bits(name: str, bits: object) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 8 <= bits <= 15:
        raise ValueError("%s must be an integer from 8 to 15, not %r" % (name, bits))


def check_zlib_options(compress_level: int, mem_level: int, threshold: int) -> None:
    if not -1 <= compress_level <= 9:
        raise ValueError("compress_level must be -1 to 9, not %r" % (compress_level,))
    if not 1 <= mem_level <= 9:
        raise ValueError("mem_level must be 1 to 9, not %r" % (mem_level,))
    if threshold < 0:
        raise ValueError("threshold must be >= 0, not %r" % (threshold,))


class Deflater:
    """Compress with the RFC 1979 sync-flush trick, stripping ``00 00 ff ff`` (§7.2.1).

    Shared with :mod:`twspy.deflate_frame`, which flushes every frame the same way.
    """

    __slots__ = ("wbits", "level", "mem_level", "no_context_takeover", "_zobj")

    def __init__(self, bits: int, level: int, mem_level: int, no_context_takeover: bool) -> None:
        # zlib >= 1.2.9 refuses a raw 256-byte window (and older versions silently used
        # 512). 9 is safe for a peer that agreed to 8: zlib never emits a distance above
        # window - 262 = 250 bytes (its MAX_DIST), which fits in 256 (Node ws does the same).
        self.wbits = max(bits, 9)
        self.level = level
        self.mem_level = mem_level
        self.no_context_takeover = no_context_takeover
        self._zobj: zlib._Compress | None = None

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        zobj = self._zobj
        if zobj is None:
            zobj = zlib.compressobj(self.level, zlib.DEFLATED, -self.wbits, self.mem_level)
        # Z_SYNC_FLUSH keeps the LZ77 window (context takeover) and byte-aligns the output
        # with an empty stored block; an empty input still yields 00 00 00 ff ff, so the
        # stripped result is never empty (b"\x00" for an empty message).
        out = zobj.compress(data) + zobj.flush(zlib.Z_SYNC_FLUSH)
        # Without context takeover each message starts from an empty window (§7.1.1):
        # drop the compressor rather than keep ~144 KiB per idle connection.
        self._zobj = None if self.no_context_takeover else zobj
        return out[:-4]

    def close(self) -> None:
        self._zobj = None


class Inflater:
    """Raw-DEFLATE decompressor with a bounded output (§7.2.2 and the bomb guard).

    Shared with :mod:`twspy.deflate_frame`. A *unit* is what the ``00 00 ff ff`` tail ends:
    a message here, a frame there; :meth:`finish` closes it.

    Handles a peer that ends its data with a BFINAL=1 block (§7.2.3.4): zlib's object then
    reaches ``eof`` and would silently swallow everything after it, so a new one is made,
    primed with the last window of output so that later back-references still resolve.
    That restart happens at most once per unit: what may legitimately follow a final block
    is the padding byte and the tail (an empty stored block), and a second end of stream
    inside one unit is refused with 1007. Without that bound, ``03 00`` repeated (complete
    empty final blocks that inflate to nothing, so no size limit fires) cost one zlib object
    and one copy of the remaining input per two bytes: quadratic CPU (issue 20).
    """

    __slots__ = ("bits", "_zobj", "_history", "_restarted")

    def __init__(self, bits: int = 15) -> None:
        self.bits = bits
        self._zobj: zlib._Decompress | None = None
        self._history = bytearray()
        self._restarted = False  # a stream ended and another began within the current unit

    def _remember(self, out: bytes) -> None:
        # Keep at least the last window of output for a BFINAL restart; trimming only past
        # two windows makes the cost one memcpy of the output, amortised.
        window = 1 << self.bits
        history = self._history
        if len(out) >= window:
            history[:] = memoryview(out)[-window:]
        else:
            history += out
            if len(history) > 2 * window:
                del history[:-window]

    def _new_stream(self) -> zlib._Decompress:
        zdict = self._history[-(1 << self.bits):]
        zobj = self._zobj = (zlib.decompressobj(-self.bits, zdict=bytes(zdict)) if zdict
                             else zlib.decompressobj(-self.bits))
        return zobj

    def inflate(self, data: bytes | bytearray | memoryview, produced: int,
                max_size: int | None) -> bytes:
        """Inflate ``data``; ``produced`` bytes of this unit were already output.

        Never outputs more than ``max_size - produced + 1`` bytes: raises PayloadTooBig
        (1009) as soon as the limit is passed, and ProtocolError (1007) for corrupt data or
        a second end of stream in the unit. Work is linear in ``len(data)``.
        """
        parts = []
        view = data  # a memoryview past the final block only after a restart (rare)
        while True:
            zobj = self._zobj
            if zobj is None:
                zobj = self._new_stream()
            elif zobj.eof:
                # Data after a final block (a previous call ended exactly on it).
                if self._restarted:
                    raise ProtocolError("compressed data continues after a final deflate block", 1007)
                self._restarted = True
                zobj = self._new_stream()
            try:
                if max_size is None:
                    out = zobj.decompress(view)
                else:
                    # max_length is never 0, which would mean "unlimited" to CPython.
                    out = zobj.decompress(view, max_size - produced + 1)
            except zlib.error as exc:
                raise ProtocolError("invalid compressed data: %s" % exc, 1007) from None
            produced += len(out)
            if max_size is not None and (produced > max_size or zobj.unconsumed_tail):
                raise PayloadTooBig("inflated message exceeds the limit of %d bytes" % max_size)
            if out:
                self._remember(out)
                parts.append(out)
            if not zobj.eof:
                break
            rest = len(zobj.unused_data)
            if not rest:
                break
            # Walk on by offset: what follows the BFINAL block, without another copy.
            view = memoryview(view)[len(view) - rest:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self, produced: int, max_size: int | None) -> bytes:
        """End the unit: feed the ``00 00 ff ff`` tail (§7.2.2) unless a BFINAL block ended it."""
        zobj = self._zobj
        if zobj is not None and zobj.eof:
            # The data ended with a BFINAL block and no trailing empty block: it is
            # complete, and the tail would start a bogus stored block in a new inflater.
            self._zobj = None  # the next unit starts a new stream; not a restart
            out = b""
        else:
            out = self.inflate(_TAIL, produced, max_size)
            if self._zobj is not None and self._zobj.eof:
                self._zobj = None
        self._restarted = False
        return out

    def reset(self) -> None:
        """Forget the window: the next data starts a new DEFLATE stream."""
        self._zobj = None
        self._history = bytearray()
        self._restarted = False


class DeflateMessageCodec(ExtensionCodec):
    """The permessage-deflate state of one connection (RFC 7692 §6, §7.2).

    "Local" is this endpoint's compressor, "remote" the peer's compressor, i.e. our
    decompressor. Built by :class:`DeflateMessage` during the handshake.

    Args:
        local_max_window_bits: window of our compressor (8 is compressed with 9, see
            ``Deflater``).
        remote_max_window_bits: window the peer agreed to; our decompressor uses it.
        local_no_context_takeover: start each sent message from an empty window.
        remote_no_context_takeover: the peer does; we then drop our decompressor after
            each message, which saves memory.
        compress_level, mem_level: zlib ``compressobj`` options.
        threshold: messages shorter than this are sent uncompressed.
        max_compressed_size: most compressed bytes a received message may carry (1009
            beyond); -1: ``2 * max_size + 64 KiB``; None: no limit.
    """

    name = "permessage-deflate"
    rsv = RSV1
    per_frame = False

    def __init__(self, *, local_max_window_bits: int = 15, remote_max_window_bits: int = 15,
                 local_no_context_takeover: bool = False, remote_no_context_takeover: bool = False,
                 compress_level: int = DEFAULT_COMPRESS_LEVEL, mem_level: int = DEFAULT_MEM_LEVEL,
                 threshold: int = DEFAULT_THRESHOLD, max_compressed_size: int | None = -1) -> None:
        check_bits("local_max_window_bits", local_max_window_bits)
        check_bits("remote_max_window_bits", remote_max_window_bits)
        check_zlib_options(compress_level, mem_level, threshold)
        check_max_compressed_size(max_compressed_size)
        self.max_compressed_size = max_compressed_size
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.threshold = threshold
        self._deflater = Deflater(local_max_window_bits, compress_level, mem_level,
                                   local_no_context_takeover)
        self._inflater = Inflater(remote_max_window_bits)
        self._size = 0        # bytes output so far for the message being received
        self._compressed = 0  # compressed bytes received so far for it

    def encode_message(self, opcode: int, payload: bytes, compress: bool = True) -> tuple[bytes, int]:
        """Compress a whole data message (§7.2.1).

        Returns ``(payload, RSV1)``, RSV1 going on the first frame only (§6), or the payload
        unchanged and 0 when ``compress`` is false or it is shorter than ``threshold``.
        """
        if not compress or len(payload) < self.threshold:
            return payload, 0
        return self._deflater.compress(payload), RSV1

    def decode_frame_of_message(self, payload: bytes, first_rsv: int, final: bool,
                                max_size: int | None) -> bytes:
        """Return the application data of one frame of a received message (§7.2.2).

        The message is compressed iff RSV1 is in ``first_rsv`` (its first frame's bits).
        Data is inflated as frames arrive; the ``00 00 ff ff`` tail is fed with the FIN
        frame. Raises PayloadTooBig (1009) once the message's inflated size exceeds
        ``max_size`` (None: no limit) without inflating much past it, and ProtocolError
        (1007) for data that doesn't inflate or continues after a second final block.
        The message's compressed bytes are capped too (``max_compressed_size``, 1009).
        """
        if not first_rsv & RSV1:
            # Uncompressed (§6): delivered as is and the window is left alone.
            self._size += len(payload)
            if max_size is not None and self._size > max_size:
                raise PayloadTooBig("message exceeds the limit of %d bytes" % max_size)
            if final:
                self._size = 0
            return payload
        inflater = self._inflater
        out = b""
        if payload:
            self._compressed += len(payload)
            limit = compressed_limit(self.max_compressed_size, max_size)
            if limit is not None and self._compressed > limit:
                raise PayloadTooBig("compressed message exceeds the limit of %d bytes" % limit)
            out = inflater.inflate(payload, self._size, max_size)
            self._size += len(out)
        if final:
            # A compressed message is at least b"\x00"; an empty one can only come from a
            # buggy peer. Feeding it only the tail would leave zlib inside a stored block
            # and corrupt the next message, so it is delivered empty and zlib left alone.
            if self._compressed:
                rest = inflater.finish(self._size, max_size)
                if rest:
                    out += rest
            self._size = self._compressed = 0
            if self.remote_no_context_takeover:
                inflater.reset()  # §7.1.1: allowed, and frees the window between messages
        return out

    def close(self) -> None:
        """Release the zlib objects."""
        self._deflater.close()
        self._inflater.reset()

    def __repr__(self) -> str:
        return ("DeflateMessageCodec(local_max_window_bits=%d, remote_max_window_bits=%d, "
                "local_no_context_takeover=%r, remote_no_context_takeover=%r)" % (
                    self.local_max_window_bits, self.remote_max_window_bits,
                    self.local_no_context_takeover, self.remote_no_context_takeover))


def _parse_params(params: Params, response: bool) -> dict[str, int | bool]:
    """Validate permessage-deflate parameters (§7.1); raise NegotiationError.

    Returns ``{name: True or window bits}``; ``client_max_window_bits`` maps to True when
    it has no value, which only an offer may do.
    """
    found: dict[str, int | bool] = {}
    for name, value in params:
        if name in found:
            raise NegotiationError("duplicate parameter %s" % name)
        if name in _NO_VALUE:
            if value is not None:
                raise NegotiationError("parameter %s takes no value, got %r" % (name, value))
            found[name] = True
        elif name in ("server_max_window_bits", "client_max_window_bits"):
            if value is None:
                if name == "server_max_window_bits" or response:
                    raise NegotiationError("parameter %s needs a value" % name)
                found[name] = True
            elif value in WINDOW_BITS:
                found[name] = WINDOW_BITS[value]
            else:
                raise NegotiationError("invalid %s=%s (8 to 15 expected)" % (name, value))
        else:
            raise NegotiationError("unknown parameter %s" % name)
    return found


def _mismatch(offer: dict[str, int | bool], agreed: dict[str, int | bool]) -> str | None:
    """Why a response can't answer ``offer`` (§5.1, §7.1), or None if it can."""
    if "server_no_context_takeover" in offer and "server_no_context_takeover" not in agreed:
        return "server_no_context_takeover was requested but not confirmed"
    if "server_max_window_bits" in offer:
        bits = agreed.get("server_max_window_bits")
        if bits is None:
            return "server_max_window_bits was requested but not confirmed"
        if bits > offer["server_max_window_bits"]:
            return "server_max_window_bits=%d exceeds the %d requested" % (
                bits, offer["server_max_window_bits"])
    if "client_max_window_bits" in agreed and "client_max_window_bits" not in offer:
        return "client_max_window_bits was not offered"
    return None


class DeflateMessage(Extension):
    """permessage-deflate configuration (RFC 7692), for clients and servers.

    As a client, it makes one offer built from the arguments (§7.1); as a server, it
    accepts the first acceptable offer, declining (never failing the handshake on) offers
    with unknown, repeated or invalid parameters (§5, §7.1).

    Args:
        server_no_context_takeover: client: ask the server not to keep its window
            between messages; server: don't, even if not asked (§7.1.1.1).
        client_no_context_takeover: client: promise not to keep ours (a hint, kept);
            server: forbid the client to keep its window (§7.1.1.2). A server also
            confirms it whenever a client offers it, so it can free its decompressor
            between messages.
        server_max_window_bits: 8-15 or None. Client: ask the server for a window of at
            most 2**N bytes; server: never use more (§7.1.2.1).
        client_max_window_bits: 8-15, None or False. Client: offer the parameter, with
            the value as a limit we keep to, without a value for None (as browsers do),
            not at all for False. Server: limit the client's window when it offered the
            parameter; offers without it are still accepted, and then inflated with a
            32 KiB window, since a server may not send it unasked (§7.1.2.2).
        compress_level: zlib level, -1 to 9; 6 by default (see the module docstring).
        mem_level: zlib memLevel, 1 to 9; 5 by default, saving ~112 KiB per connection.
        threshold: messages shorter than this many bytes are sent uncompressed.
        max_compressed_size: most compressed bytes a received message may carry, 1009
            beyond; -1 (default): ``2 * max_size + 64 KiB``; None: no limit.

    A window of 8 bits is agreed to but compressed with 9 (zlib can't do 8), which a
    256-byte-window peer decodes safely: zlib's match distances stay <= 250.
    """

    name = "permessage-deflate"
    aliases: tuple[str, ...] = ()
    rsv = RSV1

    def __init__(self, *, server_no_context_takeover: bool = False,
                 client_no_context_takeover: bool = False,
                 server_max_window_bits: int | None = None,
                 client_max_window_bits: int | bool | None = None,
                 compress_level: int = DEFAULT_COMPRESS_LEVEL, mem_level: int = DEFAULT_MEM_LEVEL,
                 threshold: int = DEFAULT_THRESHOLD, max_compressed_size: int | None = -1) -> None:
        if server_max_window_bits is not None:
            check_bits("server_max_window_bits", server_max_window_bits)
        if client_max_window_bits is not None and not isinstance(client_max_window_bits, bool):
            check_bits("client_max_window_bits", client_max_window_bits)
        check_zlib_options(compress_level, mem_level, threshold)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.threshold = threshold
        check_max_compressed_size(max_compressed_size)
        self.max_compressed_size = max_compressed_size

    def _codec(self, **settings: int | bool) -> DeflateMessageCodec:
        return DeflateMessageCodec(compress_level=self.compress_level, mem_level=self.mem_level,
                                   threshold=self.threshold, max_compressed_size=self.max_compressed_size,
                                   **settings)  # type: ignore[arg-type]

    # client side

    def offers(self) -> list[tuple[str, Params]]:
        """The client's single offer, e.g. ``permessage-deflate; client_max_window_bits``."""
        params: Params = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        if self.client_max_window_bits is None or self.client_max_window_bits is True:
            params.append(("client_max_window_bits", None))
        elif self.client_max_window_bits is not False:
            params.append(("client_max_window_bits", str(self.client_max_window_bits)))
        return [(self.name, params)]

    def accept_response(self, name: str, params: Params,
                        offers: list[tuple[str, Params]]) -> DeflateMessageCodec:
        """Validate the server's response against our offers (§5.1, §7.1).

        Accepts it if it is a valid answer to at least one offer. A
        ``client_max_window_bits=M`` above the value N we offered is accepted and we
        compress with N, which satisfies both. Raises NegotiationError otherwise; the
        client then fails the connection with 1010.
        """
        if not offers:
            raise NegotiationError("server accepted %s, which was not offered" % name)
        try:
            agreed = _parse_params(params, response=True)
        except NegotiationError as exc:
            raise NegotiationError("invalid %s response %r: %s" % (
                name, format_extensions([(name, params)]), exc.message)) from None
        reasons = []
        for _, offer_params in offers:
            offer = _parse_params(offer_params, response=False)
            reason = _mismatch(offer, agreed)
            if reason is not None:
                reasons.append(reason)
                continue
            local_bits = 15
            for value in (offer.get("client_max_window_bits"), agreed.get("client_max_window_bits")):
                if value is not None and value is not True:
                    local_bits = min(local_bits, int(value))
            return self._codec(
                local_max_window_bits=local_bits,
                remote_max_window_bits=int(agreed.get("server_max_window_bits", 15)),
                local_no_context_takeover=("client_no_context_takeover" in agreed
                                           or "client_no_context_takeover" in offer),
                remote_no_context_takeover="server_no_context_takeover" in agreed)
        raise NegotiationError("%s response %r answers none of our offers: %s" % (
            name, format_extensions([(name, params)]), "; ".join(reasons)))

    # server side

    def accept_offer(self, name: str, params: Params) -> tuple[Params, DeflateMessageCodec] | None:
        """Answer one offer with ``(response params, codec)``, or None to decline it (§7.1)."""
        try:
            offer = _parse_params(params, response=False)
        except NegotiationError as exc:
            logger.debug("declining %s offer %r: %s", name, params, exc.message)
            return None
        response: Params = []
        server_nct = self.server_no_context_takeover or "server_no_context_takeover" in offer
        if server_nct:
            response.append(("server_no_context_takeover", None))
        # Confirming the client's own hint costs it nothing and lets us reset per message.
        client_nct = self.client_no_context_takeover or "client_no_context_takeover" in offer
        if client_nct:
            response.append(("client_no_context_takeover", None))
        server_bits = self.server_max_window_bits
        if "server_max_window_bits" in offer:
            server_bits = min(int(offer["server_max_window_bits"]), server_bits or 15)
        if server_bits is not None:
            response.append(("server_max_window_bits", str(server_bits)))
        client_bits = None
        limit = self.client_max_window_bits
        if "client_max_window_bits" in offer and limit is not None and not isinstance(limit, bool):
            offered = offer["client_max_window_bits"]
            client_bits = limit if offered is True else min(int(offered), limit)
            response.append(("client_max_window_bits", str(client_bits)))
        codec = self._codec(local_max_window_bits=server_bits or 15,
                            remote_max_window_bits=client_bits or 15,
                            local_no_context_takeover=server_nct,
                            remote_no_context_takeover=client_nct)
        return response, codec

    def __repr__(self) -> str:
        return ("DeflateMessage(server_no_context_takeover=%r, client_no_context_takeover=%r, "
                "server_max_window_bits=%r, client_max_window_bits=%r, compress_level=%r, "
                "mem_level=%r, threshold=%r, max_compressed_size=%r)" % (
                    self.server_no_context_takeover, self.client_no_context_takeover,
                    self.server_max_window_bits, self.client_max_window_bits,
                    self.compress_level, self.mem_level, self.threshold, self.max_compressed_size))


def default_extensions() -> list[Extension]:
    """What twspy.connect offers and Server accepts unless told otherwise: permessage-deflate, as browsers speak."""
    return [DeflateMessage()]
