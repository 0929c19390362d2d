//! The gRPC codec of every etcd service and client in cutover: prost's encoding, with
//! small starting buffers. tonic starts each stream's encode and decode buffers at 8 KiB;
//! a proxied watch holds four of them (client and datastore side, each way), which made
//! ten thousand idle watches cost over 300 MiB. etcd's messages are mostly far smaller,
//! and a buffer still grows for a large one.
//!
//! [`Answer`] lets a handler send back a message as etcd encoded it ([`wire`]).

pub mod wire;

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where each buffer starts.
const BUFFER_BYTES: usize = 512;
/// Where a long-lived stream's buffers start (Watch, LeaseKeepAlive): most of their
/// messages are a few dozen bytes, and thousands of such streams may sit idle.
const STREAM_BUFFER_BYTES: usize = 128;
/// How much a stream encodes before it lets other tasks run (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

/// The buffer a message type starts with.
fn start_bytes<M: 'static>() -> usize {
    use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse, WatchRequest, WatchResponse};
    use std::any::TypeId;
    let streamed = [
        TypeId::of::<WatchRequest>(),
        TypeId::of::<WatchResponse>(),
        TypeId::of::<LeaseKeepAliveRequest>(),
        TypeId::of::<LeaseKeepAliveResponse>(),
    ];
    if streamed.contains(&TypeId::of::<M>()) {
        STREAM_BUFFER_BYTES
    } else {
        BUFFER_BYTES
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(start_bytes::<T>(), YIELD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(start_bytes::<U>(), YIELD_BYTES))
    }
}

/// What a handler of the KV service sends back: a message cutover built or changed, or
/// etcd's own encoding of the answer, passed on without being decoded (see [`wire`]).
/// Either goes out as the same bytes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<M> {
    Message(M),
    Encoded(wire::Encoded),
}

impl<M: Default> Default for Answer<M> {
    fn default() -> Self {
        Answer::Message(M::default())
    }
}

impl<M> From<M> for Answer<M> {
    fn from(m: M) -> Self {
        Answer::Message(m)
    }
}

impl<M: prost::Message + Default> Answer<M> {
    /// The message, decoded if it was passed on encoded (tests, and the rare answer that
    /// must change after all).
    pub fn into_message(self) -> Result<M, crate::error::Malformed> {
        match self {
            Answer::Message(m) => Ok(m),
            Answer::Encoded(e) => e.decode(),
        }
    }
}

impl<M: prost::Message + Default> prost::Message for Answer<M> {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        match self {
            Answer::Message(m) => m.encode_raw(buf),
            Answer::Encoded(e) => {
                buf.put_slice(&e.head);
                buf.put_slice(&e.body);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Decoding (a test client's) always gives the message.
        if let Answer::Message(m) = self {
            return m.merge_field(tag, wire_type, buf, ctx);
        }
        let mut m = M::default();
        let merged = m.merge_field(tag, wire_type, buf, ctx);
        *self = Answer::Message(m);
        merged
    }

    fn encoded_len(&self) -> usize {
        match self {
            Answer::Message(m) => m.encoded_len(),
            Answer::Encoded(e) => e.len(),
        }
    }

    fn clear(&mut self) {
        *self = Answer::Message(M::default());
    }
}

/// The codec of a call whose answer cutover reads with [`wire`]: the request encoded by
/// prost, the answer kept as the bytes etcd sent.
pub struct KeepEncoded<T>(PhantomData<T>);

impl<T> Default for KeepEncoded<T> {
    fn default() -> Self {
        KeepEncoded(PhantomData)
    }
}

impl<T: prost::Message + Send + 'static> Codec for KeepEncoded<T> {
    type Encode = T;
    type Decode = bytes::Bytes;
    type Encoder = ProstEncoder<T>;
    type Decoder = KeepBytes;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, crate::proto::etcdserverpb::TxnResponse>::raw_encoder(BufferSettings::new(
            start_bytes::<T>(),
            YIELD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeepBytes
    }
}

/// Takes a received message's bytes as they are.
pub struct KeepBytes;

impl tonic::codec::Decoder for KeepBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
    }
}
