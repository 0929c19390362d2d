//! Unix-socket connections: accepting the `:authority` that older gRPC clients send there.
//!
//! The etcd client of etcdctl 3.4 (grpc-go) dialling `unix:///run/etcd.sock` sends the
//! socket path as the HTTP/2 `:authority`; kube-apiserver 1.20 given `unix://NAME` sends
//! `unix://NAME` on some of its connections. Neither is a valid authority, and h2 resets
//! such streams with PROTOCOL_ERROR (etcd's own server accepts them). h2 has no option
//! to relax this, so each accepted unix connection is read through [`FixAuthority`]: it
//! follows the client's frames and, in every header block, overwrites an invalid
//! `:authority` value with a valid one of the same encoded size and the same decoded
//! length. Frame lengths and HPACK dynamic-table sizes then stay identical for the
//! client and for h2, so nothing else changes.
//!
//! Anything not understood (not HTTP/2, a malformed header block, a header block over
//! [`MAX_BLOCK`]) switches the rewriting off for the rest of the connection and passes the
//! bytes on untouched; h2 then answers as it would have without this layer.
//! An empty `:authority` cannot be given a valid value of the same length and is left
//! alone (grpc-go does not send one).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Most bytes of one header block (its frames included) held back for rewriting. Far
/// above what h2 accepts as a header list, so only abuse gets through unexamined.
const MAX_BLOCK: usize = 1 << 20;
/// Largest HPACK dynamic table followed (h2's own limit is 4096).
const MAX_TABLE: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose reads have invalid `:authority` values replaced; writes
/// pass through.
pub struct FixAuthority<S> {
    inner: S,
    fix: Rewriter,
    /// Bytes released by `fix` that the reader has not taken yet, from `taken` on.
    out: Vec<u8>,
    taken: usize,
    scratch: Vec<u8>,
    eof: bool,
}

impl<S> FixAuthority<S> {
    pub fn new(inner: S) -> Self {
        FixAuthority {
            inner,
            fix: Rewriter::new(),
            out: Vec::new(),
            taken: 0,
            scratch: Vec::new(),
            eof: false,
        }
    }
}

impl<S: Connected> Connected for FixAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.taken);
                buf.put_slice(&this.out[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.out.len() {
                    // Keep a buffer for the usual small reads, not one a huge block grew.
                    if this.out.capacity() > 4 * READ_CHUNK {
                        this.out = Vec::new();
                    } else {
                        this.out.clear();
                    }
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.fix.is_off() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK];
            }
            let mut chunk = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                this.fix.finish(&mut this.out);
                this.eof = true;
            } else {
                this.fix.feed(&this.scratch[..n], &mut this.out);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the rewriter is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// This many bytes of the connection preface matched so far.
    Preface(usize),
    /// Collecting the 9-byte header of a frame outside any header block (in `held`).
    Head,
    /// Passing the payload of a frame that carries no header block; this many bytes left.
    Skip(usize),
    /// Collecting the payload of a frame of a header block; this many bytes left.
    BlockPayload(usize),
    /// Collecting the header of the CONTINUATION frame that must come next.
    BlockHead,
    /// Not rewriting: every byte passes as it is.
    Off,
}

/// One frame of the header block being collected.
struct Frame {
    /// Offset of its payload in `held`.
    at: usize,
    len: usize,
    kind: u8,
    flags: u8,
}

/// The read side's state machine: releases the client's bytes in order, holding back a
/// header block until its last frame has arrived so it can be rewritten whole.
struct Rewriter {
    state: State,
    /// Bytes taken in but not released: a partial frame header, or a header block.
    held: Vec<u8>,
    /// Offset in `held` of the frame header being collected.
    mark: usize,
    frames: Vec<Frame>,
    stream: u32,
    table: Table,
    /// Whether a rewrite was logged on this connection (once is enough).
    logged: bool,
}

impl Rewriter {
    fn new() -> Self {
        Rewriter {
            state: State::Preface(0),
            held: Vec::new(),
            mark: 0,
            frames: Vec::new(),
            stream: 0,
            table: Table::new(),
            logged: false,
        }
    }

    fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Takes in bytes read from the client and appends what may be released to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match self.state {
                State::Off => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(seen) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = input.len().min(PREFACE.len() - seen);
                    if input[..n] != PREFACE[seen..seen + n] {
                        // HTTP/1 (which the server also accepts) or garbage.
                        self.state = State::Off;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Skip(0) => self.state = State::Head,
                State::Skip(left) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = input.len().min(left);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Skip(left - n);
                }
                State::Head | State::BlockHead => {
                    let Some(head) = self.take_head(&mut input) else { return };
                    self.on_frame_head(head, out);
                }
                State::BlockPayload(0) => {
                    let ends = self.frames.last().is_some_and(|f| f.flags & END_HEADERS != 0);
                    if ends {
                        if self.rewrite_block().is_err() {
                            self.give_up(out);
                            continue;
                        }
                        out.append(&mut self.held);
                        self.frames.clear();
                        self.mark = 0;
                        self.state = State::Head;
                    } else {
                        self.mark = self.held.len();
                        self.state = State::BlockHead;
                    }
                }
                State::BlockPayload(need) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = input.len().min(need);
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::BlockPayload(need - n);
                }
            }
        }
    }

    /// The client closed its side: whatever is held goes out as it is.
    fn finish(&mut self, out: &mut Vec<u8>) {
        self.give_up(out);
    }

    fn give_up(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held = Vec::new();
        self.frames = Vec::new();
        self.mark = 0;
        self.state = State::Off;
    }

    /// Adds input to the frame header at `mark`; the header once all 9 bytes are there.
    fn take_head(&mut self, input: &mut &[u8]) -> Option<[u8; FRAME_HEAD]> {
        let have = self.held.len() - self.mark;
        let n = input.len().min(FRAME_HEAD - have);
        self.held.extend_from_slice(&input[..n]);
        *input = &input[n..];
        self.held.get(self.mark..)?.try_into().ok()
    }

    fn on_frame_head(&mut self, head: [u8; FRAME_HEAD], out: &mut Vec<u8>) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let frame = Frame {
            at: self.held.len(),
            len,
            kind,
            flags,
        };
        if self.state == State::BlockHead {
            // Only CONTINUATION frames of the same stream may follow until END_HEADERS;
            // anything else is h2's protocol error to report.
            if kind != CONTINUATION || stream != self.stream || self.held.len() + len > MAX_BLOCK {
                self.give_up(out);
                return;
            }
        } else if kind == HEADERS {
            if self.held.len() + len > MAX_BLOCK {
                self.give_up(out);
                return;
            }
            self.stream = stream;
        } else {
            out.append(&mut self.held);
            self.state = State::Skip(len);
            return;
        }
        self.frames.push(frame);
        self.state = State::BlockPayload(len);
    }

    /// Rewrites the complete header block in `held` in place.
    fn rewrite_block(&mut self) -> Result<(), Malformed> {
        // The block is the concatenation of the frames' fragments (padding and priority
        // fields excluded); a string may run across a frame boundary.
        let mut pieces = Vec::with_capacity(self.frames.len());
        let mut block = Vec::new();
        for f in &self.frames {
            let payload = self.held.get(f.at..f.at + f.len).ok_or(Malformed)?;
            let (mut lo, mut pad) = (0, 0);
            if f.kind == HEADERS {
                if f.flags & PADDED != 0 {
                    pad = usize::from(*payload.first().ok_or(Malformed)?);
                    lo = 1;
                }
                if f.flags & PRIORITY != 0 {
                    lo += 5;
                }
            }
            let hi = f.len.checked_sub(pad).filter(|&hi| hi >= lo).ok_or(Malformed)?;
            pieces.push((f.at + lo, hi - lo));
            block.extend_from_slice(&payload[lo..hi]);
        }
        let replaced = walk(&mut block, &mut self.table)?;
        if let Some(original) = replaced {
            let mut from = 0;
            for (at, len) in pieces {
                self.held[at..at + len].copy_from_slice(&block[from..from + len]);
                from += len;
            }
            if !self.logged {
                self.logged = true;
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&original),
                    "unix socket client sent an :authority that is not a valid authority (a socket path?); replaced it"
                );
            }
        }
        Ok(())
    }
}

/// A header block or Huffman string that does not decode.
#[derive(Debug, PartialEq)]
struct Malformed;

/// Walks an HPACK header block (RFC 7541 section 6), keeping `table` in step with the
/// decoder's, and replaces each invalid `:authority` value in place. Returns the first
/// value replaced, if any.
fn walk(block: &mut [u8], table: &mut Table) -> Result<Option<Vec<u8>>, Malformed> {
    let mut replaced = None;
    let mut pos = 0;
    while let Some(&first) = block.get(pos) {
        if first & 0x80 != 0 {
            // Indexed field: refers to a field already decoded (and rewritten) earlier.
            let index = read_int(block, &mut pos, 7)?;
            table.name(index)?;
            continue;
        }
        if first & 0xe0 == 0x20 {
            let size = read_int(block, &mut pos, 5)?;
            if size > MAX_TABLE {
                return Err(Malformed);
            }
            table.resize(size);
            continue;
        }
        // A literal: with incremental indexing (01), without (0000), never indexed (0001).
        let indexing = first & 0x40 != 0;
        let index = read_int(block, &mut pos, if indexing { 6 } else { 4 })?;
        let (name_len, authority) = if index == 0 {
            let name = read_string(block, &mut pos)?;
            let name = decode(&block[name.range], name.huffman)?;
            (name.len(), name == b":authority")
        } else {
            table.name(index)?
        };
        let value = read_string(block, &mut pos)?;
        let mut value_len = value.range.len();
        if authority || (indexing && value.huffman) {
            let decoded = decode(&block[value.range.clone()], value.huffman)?;
            value_len = decoded.len();
            if authority
                && !decoded.is_empty()
                && http::uri::Authority::try_from(&decoded[..]).is_err()
                && replace(&mut block[value.range], value.huffman, &decoded, indexing)
                && replaced.is_none()
            {
                replaced = Some(decoded);
            }
        }
        if indexing {
            table.insert(name_len, value_len, authority);
        }
    }
    Ok(replaced)
}

/// Reads an HPACK integer with a `prefix`-bit prefix (RFC 7541 section 5.1).
fn read_int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, Malformed> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*pos).ok_or(Malformed)?) & max;
    *pos += 1;
    if value < max {
        return Ok(value);
    }
    // Four continuation bytes reach 2^28, far beyond any sane length or index.
    for shift in [0, 7, 14, 21] {
        let b = *block.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

struct StringRef {
    range: std::ops::Range<usize>,
    huffman: bool,
}

/// Reads a string literal's header and skips its bytes (RFC 7541 section 5.2).
fn read_string(block: &[u8], pos: &mut usize) -> Result<StringRef, Malformed> {
    let huffman = *block.get(*pos).ok_or(Malformed)? & 0x80 != 0;
    let len = read_int(block, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or(Malformed)?;
    let range = *pos..end;
    *pos = end;
    Ok(StringRef { range, huffman })
}

fn decode(bytes: &[u8], huffman: bool) -> Result<Vec<u8>, Malformed> {
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Characters kept from an invalid authority: valid anywhere in a host name.
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

/// A character valid in an authority whose Huffman code is `bits` long, if there is one.
/// Up to 8 bits these are host-name characters ('/' and '-' are both 6 bits, so a path
/// keeps its size); 10, 11 and 13 bits only make up for longer codes that were replaced.
fn stand_in(bits: usize) -> Option<u8> {
    match bits {
        5 => Some(b'0'),
        6 => Some(b'-'),
        7 => Some(b'x'),
        8 => Some(b'X'),
        10 => Some(b'!'),
        11 => Some(b'+'),
        13 => Some(b'~'),
        _ => None,
    }
}

fn code_len(b: u8) -> usize {
    usize::from(CODE_LENGTHS[usize::from(b)])
}

/// Overwrites `value` (as encoded in the block) with a valid authority of the same
/// encoded size: `decoded` with every other character replaced. With `same_len` the
/// decoded length is kept too (the value goes into the dynamic table, whose entry size
/// counts it). False when no such string exists; then `value` is untouched.
fn replace(value: &mut [u8], huffman: bool, decoded: &[u8], same_len: bool) -> bool {
    if !huffman {
        for b in value.iter_mut().filter(|b| !keep(**b)) {
            *b = b'-';
        }
        return true;
    }
    // Every code is 5 to 30 bits, so a stand-in of up to 8 bits exists for each.
    let mut text: Vec<u8> = decoded
        .iter()
        .map(|&b| if keep(b) { Some(b) } else { stand_in(code_len(b).min(8)) })
        .collect::<Option<_>>()
        .unwrap_or_default();
    // Replacing a character whose code is over 8 bits shortens the string: lengthen
    // stand-ins (then, if need be, any character) until it fills the same bytes again,
    // with under 8 bits of padding as HPACK requires.
    let bits: usize = text.iter().map(|&b| code_len(b)).sum();
    let mut short = (value.len() * 8).saturating_sub(7).saturating_sub(bits);
    for (cap, only_stand_ins) in [(8, true), (13, false)] {
        for (t, &d) in text.iter_mut().zip(decoded) {
            let len = code_len(*t);
            if short == 0 || len >= cap || (only_stand_ins && keep(d)) {
                continue;
            }
            // At most one bit over (no codes of 9 or 12 bits), which the up to 7 bits of
            // padding absorb.
            let want = (len + short).min(cap);
            if let Some((bits, c)) = (want..=cap).find_map(|l| stand_in(l).map(|c| (l, c))) {
                *t = c;
                short = short.saturating_sub(bits - len);
            }
        }
    }
    if short > 0 {
        if same_len {
            return false;
        }
        // Mostly long codes (non-ASCII): any number of 5-bit characters will do here.
        text = vec![b'0'; value.len() * 8 / 5];
    }
    let encoded = huffman_encode(&text);
    if encoded.len() != value.len() || http::uri::Authority::try_from(&text[..]).is_err() {
        return false;
    }
    value.copy_from_slice(&encoded);
    true
}

/// The names of HPACK's static table (RFC 7541 Appendix A); only their lengths matter
/// here, for the sizes of dynamic-table entries that reuse them.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// What is known of one dynamic-table entry.
struct Entry {
    name_len: usize,
    size: usize,
    authority: bool,
}

/// The decoder's dynamic table (RFC 7541 section 4), as far as needed to know which
/// indices name `:authority` and when entries are evicted. Entry sizes depend only on
/// name and value lengths, which rewriting keeps, so this matches h2's table.
struct Table {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Self {
        Table {
            entries: VecDeque::new(),
            size: 0,
            // SETTINGS_HEADER_TABLE_SIZE's initial value, which h2's server keeps.
            max: 4096,
        }
    }

    /// The name length of entry `index`, and whether that name is `:authority`.
    fn name(&self, index: usize) -> Result<(usize, bool), Malformed> {
        match index {
            0 => Err(Malformed),
            1..=61 => Ok((STATIC_NAMES[index - 1].len(), index == 1)),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.name_len, e.authority))
                .ok_or(Malformed),
        }
    }

    fn insert(&mut self, name_len: usize, value_len: usize, authority: bool) {
        let size = name_len + value_len + 32;
        self.evict_to(self.max.saturating_sub(size));
        // An entry larger than the whole table empties it and is not added.
        if size <= self.max {
            self.size += size;
            self.entries.push_front(Entry {
                name_len,
                size,
                authority,
            });
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// Code length in bits of each symbol of HPACK's Huffman code (RFC 7541 Appendix B),
/// 256 being EOS. The code is canonical: codes are numbered in order of length, then
/// symbol, so these lengths define every code (see [`HUFFMAN`]).
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, // 0x20
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, // 0x30
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, // 0x40
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, // 0x50
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, // 0x60
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30,                                                             // EOS
];

/// The Huffman code derived from [`CODE_LENGTHS`].
struct Huffman {
    /// Each symbol's code, right-aligned.
    code: [u32; 257],
    /// By length: the first code of that length, how many there are, and where their
    /// symbols start in `sorted`.
    first: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    /// Symbols in code order.
    sorted: [u16; 257],
}

static HUFFMAN: Huffman = canonical();

const fn canonical() -> Huffman {
    let mut h = Huffman {
        code: [0; 257],
        first: [0; 31],
        count: [0; 31],
        start: [0; 31],
        sorted: [0; 257],
    };
    let (mut next, mut k, mut len) = (0u32, 0usize, 1usize);
    while len <= 30 {
        h.first[len] = next;
        h.start[len] = k;
        let mut sym = 0;
        while sym < 257 {
            if CODE_LENGTHS[sym] as usize == len {
                h.code[sym] = next;
                h.sorted[k] = sym as u16;
                next += 1;
                k += 1;
            }
            sym += 1;
        }
        h.count[len] = next - h.first[len];
        next <<= 1;
        len += 1;
    }
    h
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in src {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            len += 1;
            if len > 30 {
                return Err(Malformed);
            }
            // Canonical: a code of this length is one of the `count` after `first`.
            let offset = code.wrapping_sub(HUFFMAN.first[len]);
            if offset < HUFFMAN.count[len] {
                let sym = HUFFMAN.sorted[HUFFMAN.start[len] + offset as usize];
                let sym = u8::try_from(sym).map_err(|_| Malformed)?; // EOS inside a string
                out.push(sym);
                code = 0;
                len = 0;
            }
        }
    }
    // What is left must be padding: under 8 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1 << len) - 1 {
        return Err(Malformed);
    }
    Ok(out)
}

fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in text {
        let len = u32::from(CODE_LENGTHS[usize::from(b)]);
        acc = acc << len | u64::from(HUFFMAN.code[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS, which are all ones.
        let pad = 8 - bits;
        out.push((acc << pad | ((1 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- building client input

    /// An HPACK integer: `flags` in the first byte's high bits, `prefix` bits for `value`.
    fn int(flags: u8, prefix: u32, value: usize) -> Vec<u8> {
        let max = (1usize << prefix) - 1;
        if value < max {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max as u8];
        let mut rest = value - max;
        while rest >= 128 {
            out.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        out.push(rest as u8);
        out
    }

    fn string(s: &[u8], huffman: bool) -> Vec<u8> {
        let body = if huffman { huffman_encode(s) } else { s.to_vec() };
        let mut out = int(if huffman { 0x80 } else { 0 }, 7, body.len());
        out.extend(body);
        out
    }

    /// A literal field: `kind` is 0x40 (incremental indexing), 0x00 (without) or 0x10
    /// (never indexed); `index` 0 means a literal name.
    fn literal(kind: u8, index: usize, name: Option<(&[u8], bool)>, value: &[u8], huffman: bool) -> Vec<u8> {
        let mut out = int(kind, if kind == 0x40 { 6 } else { 4 }, index);
        if let Some((n, h)) = name {
            out.extend(string(n, h));
        }
        out.extend(string(value, huffman));
        out
    }

    /// :method POST, :scheme http, :path /x (static-table indices 3, 6, 4 with a value).
    fn request_fields() -> Vec<u8> {
        let mut b = vec![0x83, 0x86];
        b.extend(literal(0x00, 4, None, b"/x", false));
        b
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// HEADERS ending the stream and the header block.
    fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | 0x1, stream, block)
    }

    fn connection_start() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out
    }

    // ---- running it through h2

    /// An AsyncRead that hands over one byte per read.
    struct OneByte<S>(S);

    impl<S: AsyncRead + Unpin> AsyncRead for OneByte<S> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let mut one = [0u8; 1];
            let mut b = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut self.0).poll_read(cx, &mut b))?;
            buf.put_slice(b.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for OneByte<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[derive(Clone, Copy)]
    enum Via {
        /// h2 reads the socket directly: today's behaviour without this module.
        Bare,
        Fixed,
        FixedOneByte,
    }

    /// What h2's server made of each stream: the request's authority, or a reset.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Authority(Option<String>),
        Reset(u32),
    }

    /// Sends `frames` (after the preface and SETTINGS) to a real h2 server on a unix
    /// socket pair and reports, by stream id, what the server saw.
    async fn through_h2(frames: &[u8], via: Via) -> Vec<(u32, Seen)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        let accepted = tokio::spawn(async move {
            async fn run<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Vec<(u32, Seen)> {
                let mut seen = Vec::new();
                let Ok(mut conn) = h2::server::handshake(io).await else {
                    return seen;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let id = respond.stream_id().as_u32();
                    seen.push((id, Seen::Authority(req.uri().authority().map(|a| a.to_string()))));
                    let _ = respond.send_response(http::Response::new(()), true);
                }
                seen
            }
            match via {
                Via::Bare => run(server).await,
                Via::Fixed => run(FixAuthority::new(server)).await,
                Via::FixedOneByte => run(FixAuthority::new(OneByte(server))).await,
            }
        });
        let mut input = connection_start();
        input.extend_from_slice(frames);
        // A PING last: its ACK comes once h2 has handled every frame before it. The
        // resets that handling queued may follow the ACK, but they are written before
        // h2 reads any later frame, so a second PING's ACK comes after them.
        input.extend(frame(0x6, 0, 0, b"ping one"));
        client.write_all(&input).await.unwrap();

        let mut resets = Vec::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut acks = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        'read: loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
                .await
                .expect("no PING ACK")
                .unwrap();
            assert!(n > 0, "server closed before the PING ACK");
            got.extend_from_slice(&chunk[..n]);
            while got.len() >= at + FRAME_HEAD {
                let len = usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
                if got.len() < at + FRAME_HEAD + len {
                    break;
                }
                let (kind, flags) = (got[at + 3], got[at + 4]);
                let stream = u32::from_be_bytes(got[at + 5..at + 9].try_into().unwrap());
                let payload = &got[at + FRAME_HEAD..at + FRAME_HEAD + len];
                let code = payload.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                at += FRAME_HEAD + len;
                match kind {
                    // NO_ERROR only tells the client to stop sending a body nobody reads.
                    0x3 if code != Some(0) => resets.push((stream, Seen::Reset(code.unwrap()))),
                    0x7 => panic!("GOAWAY: {payload:?}"),
                    0x6 if flags & 1 != 0 => {
                        acks += 1;
                        if acks == 2 {
                            break 'read;
                        }
                        client.write_all(&frame(0x6, 0, 0, b"ping two")).await.unwrap();
                    }
                    _ => {}
                }
            }
        }
        drop(client);
        let mut seen = accepted.await.unwrap();
        seen.extend(resets);
        seen.sort_by_key(|(id, _)| *id);
        seen
    }

    async fn all_ways(frames: &[u8]) -> Vec<(u32, Seen)> {
        let fixed = through_h2(frames, Via::Fixed).await;
        assert_eq!(through_h2(frames, Via::FixedOneByte).await, fixed, "one byte at a time");
        fixed
    }

    fn authority(s: &str) -> Seen {
        Seen::Authority(Some(s.to_string()))
    }

    const PATH: &[u8] = b"/tmp/x/etcd.sock";

    fn with_authority(field: Vec<u8>) -> Vec<u8> {
        let mut b = request_fields();
        b.extend(field);
        b
    }

    #[tokio::test]
    async fn h2_alone_resets_a_path_authority() {
        let block = with_authority(literal(0x40, 1, None, PATH, true));
        let seen = through_h2(&headers(1, &block), Via::Bare).await;
        assert_eq!(seen, vec![(1, Seen::Reset(1))], "PROTOCOL_ERROR");
    }

    #[tokio::test]
    async fn a_path_authority_is_replaced_raw_and_huffman() {
        for huffman in [false, true] {
            for kind in [0x40, 0x00, 0x10] {
                let block = with_authority(literal(kind, 1, None, PATH, huffman));
                assert_eq!(
                    all_ways(&headers(1, &block)).await,
                    vec![(1, authority("-tmp-x-etcd.sock"))],
                    "huffman {huffman}, kind {kind:#x}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_literal_authority_name_is_recognised() {
        for (name_huffman, value_huffman) in [(false, false), (true, true), (false, true), (true, false)] {
            let block = with_authority(literal(
                0x10,
                0,
                Some((b":authority", name_huffman)),
                PATH,
                value_huffman,
            ));
            assert_eq!(
                all_ways(&headers(1, &block)).await,
                vec![(1, authority("-tmp-x-etcd.sock"))]
            );
        }
    }

    #[tokio::test]
    async fn valid_authorities_are_left_alone() {
        for value in ["localhost:2379", "localhost", "127.0.0.1:2379", "[::1]:2379", "u%20@h"] {
            for huffman in [false, true] {
                let block = with_authority(literal(0x40, 1, None, value.as_bytes(), huffman));
                assert_eq!(all_ways(&headers(1, &block)).await, vec![(1, authority(value))]);
            }
        }
    }

    #[tokio::test]
    async fn odd_authorities_are_replaced_with_same_size_values() {
        // Percent signs outside user info, several colons, characters with long Huffman
        // codes (which must be made up for), non-ASCII.
        let cases: [(&[u8], &str); 6] = [
            (b"a%2Fb", "a-2Fb"),
            (b"unix:/a:b", "unix--a-b"),
            (b"/a?b|c", "-a-b-c"),
            (b"/run/a#b/{x}.sock", "-run-a-b--x-.sock"),
            ("/r\u{e9}/\u{fc}".as_bytes(), "-r-----"),
            (b"\x7f", "-"),
        ];
        for (value, raw_result) in cases {
            for kind in [0x40, 0x00] {
                let block = with_authority(literal(kind, 1, None, value, false));
                assert_eq!(
                    all_ways(&headers(1, &block)).await,
                    vec![(1, authority(raw_result))],
                    "{value:?}"
                );
            }
        }
        // Huffman: the same decoded length when the field is indexed; ASCII can always be
        // matched.
        for (value, _) in &cases[..4] {
            let block = with_authority(literal(0x40, 1, None, value, true));
            let seen = all_ways(&headers(1, &block)).await;
            let Seen::Authority(Some(got)) = &seen[0].1 else {
                panic!("{value:?}: {seen:?}")
            };
            assert_eq!(got.len(), value.len(), "{value:?} became {got:?}");
        }
        // Mostly long codes cannot be matched with the same length: an indexed field is
        // left for h2 to refuse, one that is not indexed gets a longer stand-in.
        for (value, _) in &cases[4..] {
            let block = with_authority(literal(0x40, 1, None, value, true));
            assert_eq!(
                all_ways(&headers(1, &block)).await,
                vec![(1, Seen::Reset(1))],
                "{value:?}"
            );
            let block = with_authority(literal(0x10, 1, None, value, true));
            let seen = all_ways(&headers(1, &block)).await;
            let Seen::Authority(Some(got)) = &seen[0].1 else {
                panic!("{value:?}: {seen:?}")
            };
            assert!(
                got.bytes().all(|b| b == b'0') && got.len() > value.len(),
                "{value:?} became {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn padded_and_priority_headers_frames() {
        let block = with_authority(literal(0x40, 1, None, PATH, true));
        for flags in [PADDED, PRIORITY, PADDED | PRIORITY] {
            let mut payload = Vec::new();
            if flags & PADDED != 0 {
                payload.push(3);
            }
            if flags & PRIORITY != 0 {
                payload.extend([0, 0, 0, 0, 15]);
            }
            payload.extend(&block);
            if flags & PADDED != 0 {
                payload.extend([0, 0, 0]);
            }
            let frames = frame(HEADERS, END_HEADERS | 0x1 | flags, 1, &payload);
            assert_eq!(
                all_ways(&frames).await,
                vec![(1, authority("-tmp-x-etcd.sock"))],
                "flags {flags:#x}"
            );
        }
    }

    #[tokio::test]
    async fn a_block_split_inside_the_authority_across_continuations() {
        let block = with_authority(literal(0x40, 1, None, PATH, true));
        for cut in [block.len() - 5, block.len() - 1] {
            let mut frames = frame(HEADERS, 0x1, 1, &block[..cut - 2]);
            frames.extend(frame(CONTINUATION, 0, 1, &block[cut - 2..cut]));
            frames.extend(frame(CONTINUATION, END_HEADERS, 1, &block[cut..]));
            assert_eq!(all_ways(&frames).await, vec![(1, authority("-tmp-x-etcd.sock"))]);
        }
    }

    #[tokio::test]
    async fn later_requests_reuse_the_rewritten_table_entry() {
        // Request 1 adds :path /y, then :authority (62 = :authority, 63 = :path /y);
        // request 2 refers to both by index; request 3 reuses the dynamic :authority name
        // with a new value (now 62 = that, 63 = the first :authority); request 4 refers
        // to it and adds enough fields to evict all of the above; request 5 sends a
        // literal name ":authority"; request 6 refers to that.
        let mut first = vec![0x83, 0x86];
        first.extend(literal(0x40, 4, None, b"/y", true));
        first.extend(literal(0x40, 1, None, PATH, true));
        let mut frames = headers(1, &first);
        frames.extend(headers(3, &[0x83, 0x86, 0x80 | 63, 0x80 | 62]));
        let mut third = request_fields();
        third.extend(literal(0x40, 62, None, b"/run/other.sock", false));
        frames.extend(headers(5, &third));
        let mut fourth = request_fields();
        fourth.push(0x80 | 62);
        for i in 0..40 {
            fourth.extend(literal(
                0x40,
                0,
                Some((format!("x-{i}").as_bytes(), true)),
                &[b'v'; 100],
                true,
            ));
        }
        frames.extend(headers(7, &fourth));
        let mut fifth = request_fields();
        fifth.extend(literal(0x40, 0, Some((b":authority", false)), b"/last", true));
        frames.extend(headers(9, &fifth));
        frames.extend(headers(11, &[0x83, 0x86, 0x84, 0x80 | 62]));
        assert_eq!(
            all_ways(&frames).await,
            vec![
                (1, authority("-tmp-x-etcd.sock")),
                (3, authority("-tmp-x-etcd.sock")),
                (5, authority("-run-other.sock")),
                (7, authority("-run-other.sock")),
                (9, authority("-last")),
                (11, authority("-last")),
            ]
        );
    }

    #[tokio::test]
    async fn table_size_updates_are_followed() {
        // Shrink the table to nothing (evicting everything), then grow it back; the new
        // :authority is index 63 once x-a is added after it.
        let mut first = request_fields();
        first.extend(literal(0x40, 1, None, b"/one", true));
        let mut second = int(0x20, 5, 0);
        second.extend(int(0x20, 5, 4096));
        second.extend(request_fields());
        second.extend(literal(0x40, 1, None, b"/two", true));
        second.extend(literal(0x40, 0, Some((b"x-a", false)), b"b", false));
        let mut third = request_fields();
        third.extend(literal(0x00, 63, None, b"/three", false));
        let mut frames = headers(1, &first);
        frames.extend(headers(3, &second));
        frames.extend(headers(5, &third));
        frames.extend(headers(7, &[0x83, 0x86, 0x84, 0x80 | 63]));
        assert_eq!(
            all_ways(&frames).await,
            vec![
                (1, authority("-one")),
                (3, authority("-two")),
                (5, authority("-three")),
                (7, authority("-two"))
            ]
        );
    }

    #[tokio::test]
    async fn other_frames_pass_between_requests() {
        let mut frames = frame(
            HEADERS,
            END_HEADERS,
            1,
            &with_authority(literal(0x40, 1, None, PATH, true)),
        );
        frames.extend(frame(0x0, 0, 1, &[7; 3000]));
        frames.extend(frame(0x8, 0, 0, &[0, 1, 0, 0]));
        frames.extend(frame(0x0, 0x1, 1, &[]));
        frames.extend(headers(3, &[0x83, 0x86, 0x84, 0x80 | 62]));
        assert_eq!(
            all_ways(&frames).await,
            vec![(1, authority("-tmp-x-etcd.sock")), (3, authority("-tmp-x-etcd.sock"))]
        );
    }

    // ---- the rewriter on its own

    fn feed_all(input: &[u8]) -> (Vec<u8>, Rewriter) {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        r.feed(input, &mut out);
        (out, r)
    }

    fn feed_bytewise(input: &[u8]) -> Vec<u8> {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for b in input {
            r.feed(std::slice::from_ref(b), &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn only_the_authority_bytes_change() {
        let mut input = connection_start();
        let block = with_authority(literal(0x40, 1, None, PATH, false));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, 0x1, 1, b"/tmp/data"));
        let (out, r) = feed_all(&input);
        assert_eq!(r.state, State::Head);
        assert_eq!(out.len(), input.len());
        let at = input.windows(PATH.len()).position(|w| w == PATH).unwrap();
        assert_eq!(&out[at..at + PATH.len()], b"-tmp-x-etcd.sock");
        assert_eq!(out[..at], input[..at]);
        assert_eq!(out[at + PATH.len()..], input[at + PATH.len()..]);
        assert_eq!(feed_bytewise(&input), out);
    }

    #[test]
    fn not_http2_passes_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: /tmp/x.sock\r\n\r\n";
        let (out, r) = feed_all(input);
        assert_eq!(out, input);
        assert!(r.is_off());
        assert_eq!(feed_bytewise(input), input);
    }

    #[test]
    fn malformed_blocks_pass_untouched_and_stop_rewriting() {
        let bad_blocks: [Vec<u8>; 5] = [
            vec![0x80],                                     // index 0
            vec![0x80 | 70],                                // no such dynamic entry
            vec![0x41, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff], // Huffman: EOS / over-long padding
            vec![0x41, 0x0a, b'/'],                         // string runs past the block
            vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff],       // integer too long
        ];
        for bad in bad_blocks {
            let mut input = connection_start();
            let mut block = with_authority(literal(0x40, 1, None, PATH, false));
            block.extend(&bad);
            input.extend(headers(1, &block));
            input.extend(headers(3, &with_authority(literal(0x40, 1, None, PATH, false))));
            let (out, r) = feed_all(&input);
            assert_eq!(out, input, "{bad:?}");
            assert!(r.is_off());
            assert_eq!(feed_bytewise(&input), input);
        }
        // A bad padding length.
        let mut input = connection_start();
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]));
        assert_eq!(feed_all(&input).0, input);
        // A frame other than CONTINUATION inside a block.
        let mut input = connection_start();
        input.extend(frame(
            HEADERS,
            0,
            1,
            &with_authority(literal(0x40, 1, None, PATH, false)),
        ));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(feed_all(&input).0, input);
    }

    #[test]
    fn oversized_and_unfinished_blocks_are_released() {
        let mut input = connection_start();
        let mut head = frame(HEADERS, END_HEADERS, 1, &[]);
        head[..3].copy_from_slice(&[0x20, 0, 0]); // 2 MiB announced
        input.extend(&head);
        input.extend([0x82; 100]);
        let (out, r) = feed_all(&input);
        assert_eq!(out, input);
        assert!(r.is_off());

        // The client closes in the middle of a header block: the held bytes go out.
        let mut input = connection_start();
        input.extend(frame(
            HEADERS,
            0,
            1,
            &with_authority(literal(0x40, 1, None, PATH, false)),
        ));
        let (out, mut r) = feed_all(&input);
        assert!(out.len() < input.len());
        let mut out = out;
        r.finish(&mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn random_input_never_panics_and_keeps_its_length() {
        // xorshift: reproducible without a dependency.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut rewritten = 0;
        for _ in 0..3000 {
            let mut input = connection_start();
            for _ in 0..next(6) + 1 {
                let kind = [HEADERS, CONTINUATION, 0x0, 0x4, next(256) as u8][next(5)];
                let flags = next(256) as u8;
                let mut payload = match next(3) {
                    0 => with_authority(literal(0x40, 1, None, PATH, next(2) == 1)),
                    1 => (0..next(40))
                        .map(|_| [0x80 | 62, 0x41, 0x0f, 0x1f, 0xff, b'/'][next(6)])
                        .collect(),
                    _ => (0..next(60)).map(|_| next(256) as u8).collect(),
                };
                if next(4) == 0 {
                    payload.truncate(next(payload.len() + 1));
                }
                let mut f = frame(kind, flags, next(4) as u32, &payload);
                if next(8) == 0 {
                    f[2] = f[2].wrapping_add(next(5) as u8); // length that lies
                }
                input.extend(f);
            }
            let (mut whole, mut r) = feed_all(&input);
            r.finish(&mut whole);
            let mut r = Rewriter::new();
            let mut split = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = (next(20) + 1).min(rest.len());
                r.feed(&rest[..n], &mut split);
                rest = &rest[n..];
            }
            r.finish(&mut split);
            assert_eq!(split, whole, "{input:?}");
            assert_eq!(split.len(), input.len());
            rewritten += usize::from(split != input);
        }
        assert!(rewritten > 10, "only {rewritten} inputs were rewritten");
    }

    // ---- HPACK pieces

    #[test]
    fn huffman_codes_are_rfc_7541s() {
        let code = |b: usize| (HUFFMAN.code[b], CODE_LENGTHS[b]);
        assert_eq!(code(usize::from(b'0')), (0x0, 5));
        assert_eq!(code(usize::from(b't')), (0x9, 5));
        assert_eq!(code(usize::from(b' ')), (0x14, 6));
        assert_eq!(code(usize::from(b'/')), (0x18, 6));
        assert_eq!(code(usize::from(b'-')), (0x16, 6));
        assert_eq!(code(usize::from(b':')), (0x5c, 7));
        assert_eq!(code(usize::from(b'x')), (0x79, 7));
        assert_eq!(code(usize::from(b'X')), (0xfc, 8));
        assert_eq!(code(usize::from(b'~')), (0x1ffd, 13));
        assert_eq!(code(0), (0x1ff8, 13));
        assert_eq!(code(1), (0x7fffd8, 23));
        assert_eq!(code(10), (0x3ffffffc, 30));
        assert_eq!(code(255), (0x3ffffee, 26));
        // Every code is used exactly once and the last one is all ones: the lengths
        // form a complete prefix code.
        assert_eq!(code(256), ((1 << 30) - 1, 30)); // EOS
                                                    // RFC 7541 C.4.1: "www.example.com".
        assert_eq!(
            huffman_encode(b"www.example.com"),
            [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]
        );
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            let text = [b, b'a', b];
            assert_eq!(huffman_decode(&huffman_encode(&text)).unwrap(), text);
        }
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
        // Padding of 8 bits, and padding that is not all ones.
        assert_eq!(huffman_decode(&[0x07, 0xff]), Err(Malformed)); // "0" + 3 ones, then 8 ones
        assert_eq!(huffman_decode(&[0x00]), Err(Malformed)); // "0", then 000
    }

    /// h2's own encoder (which Huffman-codes every string) agrees with this decoder.
    #[tokio::test]
    async fn h2s_encoder_agrees() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let value: Vec<u8> = (0x20..=0x7e).chain(0x80..=0xff).chain([b'\t']).collect();
        let (io, mut server) = tokio::io::duplex(1 << 16);
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        server.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        let req = http::Request::builder()
            .uri("http://localhost:2379/x")
            .header("x-all", http::HeaderValue::from_bytes(&value).unwrap())
            .body(())
            .unwrap();
        let _pending = send.send_request(req, true).unwrap();
        let mut got = Vec::new();
        let block = loop {
            let mut chunk = [0u8; 4096];
            let n = server.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
            let mut at = PREFACE.len();
            let mut found = None;
            while got.len() >= at + FRAME_HEAD {
                let len = usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
                if got.len() < at + FRAME_HEAD + len {
                    break;
                }
                if got[at + 3] == HEADERS {
                    found = Some(got[at + FRAME_HEAD..at + FRAME_HEAD + len].to_vec());
                }
                at += FRAME_HEAD + len;
            }
            if let Some(b) = found {
                break b;
            }
        };
        // Find the literal-name field x-all and decode its value.
        let mut pos = 0;
        let mut decoded = None;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 || first & 0xe0 == 0x20 {
                read_int(&block, &mut pos, if first & 0x80 != 0 { 7 } else { 5 }).unwrap();
                continue;
            }
            let indexing = first & 0x40 != 0;
            let index = read_int(&block, &mut pos, if indexing { 6 } else { 4 }).unwrap();
            let name = if index == 0 {
                let n = read_string(&block, &mut pos).unwrap();
                assert!(n.huffman);
                huffman_decode(&block[n.range]).unwrap()
            } else {
                Vec::new()
            };
            let v = read_string(&block, &mut pos).unwrap();
            if name == b"x-all" {
                assert!(v.huffman);
                assert_eq!(block[v.range.clone()], huffman_encode(&value)[..], "same encoding");
                decoded = Some(huffman_decode(&block[v.range]).unwrap());
            }
        }
        assert_eq!(decoded.unwrap(), value);
        // And the walk accepts the block as it is, changing nothing.
        let mut copy = block.clone();
        assert_eq!(walk(&mut copy, &mut Table::new()), Ok(None));
        assert_eq!(copy, block);
    }

    #[test]
    fn integers_decode_as_rfc_7541_c1() {
        // C.1.1: 10 in a 5-bit prefix; C.1.2: 1337 in a 5-bit prefix.
        let mut pos = 0;
        assert_eq!(read_int(&[0x0a], &mut pos, 5), Ok(10));
        let mut pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a], &mut pos, 5), Err(Malformed));
        assert_eq!(int(0, 5, 1337), [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn table_evicts_oldest_first() {
        let mut t = Table::new();
        t.resize(100);
        t.insert(10, 10, true); // 52
        t.insert(4, 4, false); // 40: 92 in all
        assert_eq!(t.name(62), Ok((4, false)));
        assert_eq!(t.name(63), Ok((10, true)));
        t.insert(1, 1, false); // 34: evicts the first
        assert_eq!(t.name(63), Ok((4, false)));
        assert_eq!(t.name(64), Err(Malformed));
        t.insert(100, 0, true); // larger than the table: empties it
        assert_eq!(t.name(62), Err(Malformed));
        assert_eq!(t.size, 0);
        assert_eq!(t.name(1), Ok((10, true)));
        assert_eq!(t.name(0), Err(Malformed));
    }
}
