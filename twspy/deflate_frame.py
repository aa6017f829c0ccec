"""The deflate-frame extension (draft-tyoshino-hybi-websocket-perframe-deflate-06). No I/O.

The pre-RFC 7692 compression that WebKit browsers (older Safari above all) offer as
``x-webkit-deflate-frame``; :class:`DeflateFrame` answers to both that name and
``deflate-frame``, echoing the one the client used. Prefer :mod:`twspy.permessage_deflate`:
this exists for legacy clients.

Unlike permessage-deflate, compression is per **frame**: RSV1 may be set on any data frame,
continuations included; each compressed frame is deflated and sync-flushed on its own, so
it inflates as soon as it arrives (the ``00 00 ff ff`` tail is stripped and re-added per
frame). The LZ77 window still carries over from frame to frame unless
``no_context_takeover`` applies to the sender.

Parameters have the same names in offer and response but constrain the *peer*: in the
client's offer they limit the server's compressor, in the server's response the client's.
The draft's text isn't available; behaviour follows pywebsocket, the draft author's
implementation: unknown parameters are ignored, invalid values decline an offer (server)
or fail the handshake (client), and decompression always uses a 32 KiB window.
"""

from __future__ import annotations

import logging

from .errors import NegotiationError, PayloadTooBig, ProtocolError
from .extension import Extension, ExtensionCodec, Params
from .frame import RSV1, Frame
from .permessage_deflate import (
    DEFAULT_COMPRESS_LEVEL,
    DEFAULT_MEM_LEVEL,
    DEFAULT_THRESHOLD,
    WINDOW_BITS,
    Deflater,
    Inflater,
    check_bits,
    check_max_compressed_size,
    check_zlib_options,
    compressed_limit,
)

__all__ = ["DeflateFrame", "DeflateFrameCodec"]

logger = logging.getLogger(__name__)


class DeflateFrameCodec(ExtensionCodec):
    """The deflate-frame state of one connection; runs in the websocket layer.

    Args:
        name: the token negotiated (``deflate-frame`` or ``x-webkit-deflate-frame``).
        max_window_bits: window of our compressor, as the peer asked (8 is compressed
            with 9, whose match distances still fit in 256 bytes).
        no_context_takeover: the peer asked us to compress every frame from an empty window.
        compress_level, mem_level: zlib ``compressobj`` options.
        threshold: frames with a shorter payload are sent uncompressed.
        max_compressed_size: most compressed bytes the frames of one received message may
            carry (1009 beyond); -1: ``2 * max_size + 64 KiB``; None: no limit.
    """

    rsv = RSV1
    per_frame = True

    def __init__(self, name: str = "deflate-frame", *, max_window_bits: int = 15,
                 no_context_takeover: bool = False, compress_level: int = DEFAULT_COMPRESS_LEVEL,
                 mem_level: int = DEFAULT_MEM_LEVEL, threshold: int = DEFAULT_THRESHOLD,
                 max_compressed_size: int | None = -1) -> None:
        check_bits("max_window_bits", max_window_bits)
        check_zlib_options(compress_level, mem_level, threshold)
        check_max_compressed_size(max_compressed_size)
        self.max_compressed_size = max_compressed_size
        self.name = name
        self.max_window_bits = max_window_bits
        self.no_context_takeover = no_context_takeover
        self.threshold = threshold
        self._deflater = Deflater(max_window_bits, compress_level, mem_level, no_context_takeover)
        # The peer's window is only requested, not promised: inflate with 32 KiB, and keep
        # the window even when it was asked not to use it (harmless, and robust).
        self._inflater = Inflater(15)
        self._size = 0        # bytes of the message being received, after inflation
        self._compressed = 0  # compressed bytes received so far for it

    def encode_frame(self, frame: Frame) -> Frame:
        """Compress a data frame's payload on its own and set RSV1.

        Control frames, and data frames shorter than ``threshold``, are returned unchanged.
        """
        if frame.is_control or len(frame.payload) < self.threshold:
            return frame
        return Frame(frame.opcode, self._deflater.compress(frame.payload),
                     masking_key=frame.masking_key, mask=frame.mask, final=frame.final,
                     rsv1=True, rsv2=frame.rsv2, rsv3=frame.rsv3)

    def decode_frame(self, frame: Frame, max_size: int | None) -> Frame:
        """Inflate a data frame that has RSV1 set and clear the bit.

        ``max_size`` (None: no limit) bounds the inflated size of the whole message, i.e.
        the frames up to FIN, uncompressed ones included: PayloadTooBig (1009) is raised
        without inflating much past it; so does a message whose compressed frames carry
        more than ``max_compressed_size`` bytes. Corrupt data, or data after a second final
        block in one frame, raises ProtocolError (1007); RSV1 on a control frame, 1002.
        """
        if frame.is_control:
            if frame.rsv1:
                raise ProtocolError("control frame with RSV1 set")
            return frame
        size = self._size
        if not frame.rsv1:
            payload = frame.payload
            size += len(payload)
            if max_size is not None and size > max_size:
                raise PayloadTooBig("message exceeds the limit of %d bytes" % max_size)
        else:
            payload = b""
            # An empty compressed payload (at least b"\x00" when made properly) must not
            # reach zlib: the tail alone leaves it inside a stored block.
            if frame.payload:
                self._compressed += len(frame.payload)
                limit = compressed_limit(self.max_compressed_size, max_size)
                if limit is not None and self._compressed > limit:
                    raise PayloadTooBig("compressed message exceeds the limit of %d bytes" % limit)
                inflater = self._inflater
                payload = inflater.inflate(frame.payload, size, max_size)
                size += len(payload)
                rest = inflater.finish(size, max_size)
                if rest:
                    payload += rest
                    size += len(rest)
        self._size = 0 if frame.final else size
        if frame.final:
            self._compressed = 0
        if not frame.rsv1:
            return frame
        return Frame(frame.opcode, payload, masking_key=frame.masking_key, mask=frame.mask,
                     final=frame.final, rsv1=False, rsv2=frame.rsv2, rsv3=frame.rsv3)

    def close(self) -> None:
        """Release the zlib objects."""
        self._deflater.close()
        self._inflater.reset()

    def __repr__(self) -> str:
        return "DeflateFrameCodec(%r, max_window_bits=%d, no_context_takeover=%r)" % (
            self.name, self.max_window_bits, self.no_context_takeover)


def _parse_params(params: Params) -> dict[str, int]:
    """``{"max_window_bits": N, "no_context_takeover": 1}`` from the known parameters.

    Unknown parameters are ignored (pywebsocket); NegotiationError for an invalid value
    or a repeated parameter.
    """
    found: dict[str, int] = {}
    for name, value in params:
        if name not in ("max_window_bits", "no_context_takeover"):
            continue
        if name in found:
            raise NegotiationError("duplicate parameter %s" % name)
        if name == "no_context_takeover":
            if value is not None:
                raise NegotiationError("parameter no_context_takeover takes no value, got %r" % value)
            found[name] = 1
        elif value in WINDOW_BITS:
            found[name] = WINDOW_BITS[value]
        else:
            raise NegotiationError("invalid max_window_bits=%s (8 to 15 expected)" % value)
    return found


class DeflateFrame(Extension):
    """deflate-frame / x-webkit-deflate-frame configuration, for clients and servers.

    Both arguments constrain the peer's compressor: the client sends them in its offer,
    the server in its response. A server answers with the name the client used; a client
    offers ``deflate-frame``. When both this and :class:`~twspy.permessage_deflate.DeflateMessage`
    are configured, only one is accepted (both use RSV1).

    Args:
        max_window_bits: 8-15 or None: ask the peer to use a window of at most 2**N bytes.
        no_context_takeover: ask the peer to compress every frame from an empty window.
        compress_level: zlib level, -1 to 9 (default 6, as for permessage-deflate).
        mem_level: zlib memLevel, 1 to 9 (default 5).
        threshold: frames shorter than this many bytes are sent uncompressed.
        max_compressed_size: most compressed bytes a received message may carry (1009
            beyond); -1 (default): ``2 * max_size + 64 KiB``; None: no limit.
    """

    name = "deflate-frame"
    aliases: tuple[str, ...] = ("x-webkit-deflate-frame",)
    rsv = RSV1

    def __init__(self, *, max_window_bits: int | None = None, no_context_takeover: bool = False,
                 compress_level: int = DEFAULT_COMPRESS_LEVEL, mem_level: int = DEFAULT_MEM_LEVEL,
                 threshold: int = DEFAULT_THRESHOLD, max_compressed_size: int | None = -1) -> None:
        if max_window_bits is not None:
            check_bits("max_window_bits", max_window_bits)
        check_zlib_options(compress_level, mem_level, threshold)
        self.max_window_bits = max_window_bits
        self.no_context_takeover = no_context_takeover
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.threshold = threshold
        check_max_compressed_size(max_compressed_size)
        self.max_compressed_size = max_compressed_size

    def _params(self) -> Params:
        params: Params = []
        if self.max_window_bits is not None:
            params.append(("max_window_bits", str(self.max_window_bits)))
        if self.no_context_takeover:
            params.append(("no_context_takeover", None))
        return params

    def _codec(self, name: str, settings: dict[str, int]) -> DeflateFrameCodec:
        return DeflateFrameCodec(name, max_window_bits=settings.get("max_window_bits", 15),
                                 no_context_takeover="no_context_takeover" in settings,
                                 compress_level=self.compress_level, mem_level=self.mem_level,
                                 threshold=self.threshold, max_compressed_size=self.max_compressed_size)

    def offers(self) -> list[tuple[str, Params]]:
        """The client's single offer, e.g. ``deflate-frame; max_window_bits=10``."""
        return [(self.name, self._params())]

    def accept_response(self, name: str, params: Params,
                        offers: list[tuple[str, Params]]) -> DeflateFrameCodec:
        """Configure our compressor from the server's response; NegotiationError if invalid."""
        if not offers:
            raise NegotiationError("server accepted %s, which was not offered" % name)
        try:
            settings = _parse_params(params)
        except NegotiationError as exc:
            raise NegotiationError("invalid %s response: %s" % (name, exc.message)) from None
        return self._codec(name, settings)

    def accept_offer(self, name: str, params: Params) -> tuple[Params, DeflateFrameCodec] | None:
        """Accept an offer (None if its parameters are invalid), answering with its name."""
        try:
            settings = _parse_params(params)
        except NegotiationError as exc:
            logger.debug("declining %s offer %r: %s", name, params, exc.message)
            return None
        return self._params(), self._codec(name, settings)

    def __repr__(self) -> str:
        return ("DeflateFrame(max_window_bits=%r, no_context_takeover=%r, compress_level=%r, "
                "mem_level=%r, threshold=%r, max_compressed_size=%r)" % (
                    self.max_window_bits, self.no_context_takeover, self.compress_level,
                    self.mem_level, self.threshold, self.max_compressed_size))
