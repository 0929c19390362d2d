//! The gRPC codec of every etcd service and client in cutover: prost's encoding, with
//! small starting buffers. tonic starts each stream's encode and decode buffers at 8 KiB;
//! a proxied watch holds four of them (client and datastore side, each way), which made
//! ten thousand idle watches cost over 300 MiB. etcd's messages are mostly far smaller,
//! and a buffer still grows for a large one.

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
