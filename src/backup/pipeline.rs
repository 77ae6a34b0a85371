//! The byte pipelines, run on a blocking thread: dump → SHA-256 → zstd (on every core) →
//! sealed segments → SHA-256 → chunks for the store; and back: object → SHA-256 → opened
//! segments → zstd → SHA-256 → a sink. Memory is bounded by the segment, the zstd jobs and the
//! channel to the store, whatever the database's size.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::format::{DataKey, FormatError, Hashing, Opener, Sealer};
use crate::objects::Chunk;

/// The zstd level: zstd's default, about gzip -6's ratio at many times its speed.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd's job size on each worker. zstd sizes its buffers by it: at 1 MiB two workers hold about
/// 10 MiB; 2 MiB jobs were no faster in `cargo xtask bench backup` and held 7 MiB more.
const ZSTD_JOB_SIZE: u32 = 1 << 20;
/// Bytes read from the dump per call.
const READ_SIZE: usize = 256 << 10;
/// Bytes per chunk sent to the store.
const CHUNK_SIZE: usize = 1 << 20;
/// Chunks queued for the store before the pipeline waits for it: the S3 store's part buffer
/// already absorbs the unevenness of the uploads.
pub const CHUNKS_QUEUED: usize = 2;

/// Sizes and hashes of one pass over a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFacts {
    /// Bytes of the dump.
    pub plaintext_bytes: u64,
    /// SHA-256 of the dump, hex.
    pub plaintext_sha256: String,
    /// Bytes after compression.
    pub compressed_bytes: u64,
    /// Bytes of the object as stored.
    pub ciphertext_bytes: u64,
    /// SHA-256 of the object as stored, hex.
    pub ciphertext_sha256: String,
}

/// Sends what is written to it to the store in chunks, waiting when the store is behind.
struct ToStore {
    sender: mpsc::Sender<Chunk>,
    buffer: BytesMut,
}

impl ToStore {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK_SIZE);
        self.sender
            .blocking_send(Chunk::Data(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped receiving"))
    }

    fn end(mut self) -> io::Result<()> {
        self.send()?;
        self.sender
            .blocking_send(Chunk::End)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped receiving"))
    }
}

impl Write for ToStore {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `dump` to its end, compresses and seals it as `backup_id`, and sends the object to
/// `sender`, ending with [`Chunk::End`]. On failure nothing more is sent, so the store
/// abandons the upload.
pub fn seal(
    dump: impl Read + Send + 'static,
    key: &DataKey,
    backup_id: &str,
    segment_size: u32,
    sender: mpsc::Sender<Chunk>,
    progress: &dyn Fn(u64),
) -> io::Result<StreamFacts> {
    let to_store = Hashing::new(ToStore { sender, buffer: BytesMut::with_capacity(CHUNK_SIZE) });
    let sealer = Sealer::new(to_store, key, backup_id, segment_size)?;
    let mut compressed = zstd::stream::write::Encoder::new(Counting::new(sealer), ZSTD_LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u32;
    if workers > 1 {
        compressed.multithread(workers)?;
        compressed.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
    }
    let reader = ReadAhead::start(dump)?;
    while let Some(block) = reader.blocks.recv().map_err(|_| reader_gone())? {
        let (buffer, n) = block?;
        compressed.write_all(&buffer[..n])?;
        progress(n as u64);
        // The reader has its own buffers when this one is not back in time.
        let _ = reader.empty.try_send(buffer);
    }
    let (plaintext_sha256, plaintext_bytes) = reader.thread.join().map_err(|_| reader_gone())?;
    let (sealer, compressed_bytes) = compressed.finish()?.finish();
    let (to_store, ciphertext_sha256, ciphertext_bytes) = sealer.finish()?.finish();
    to_store.end()?;
    Ok(StreamFacts { plaintext_bytes, plaintext_sha256, compressed_bytes, ciphertext_bytes, ciphertext_sha256 })
}

/// Blocks of the dump read ahead of the compressor.
const READS_QUEUED: usize = 4;

/// A block of the dump: a buffer and how much of it was read.
type Block = io::Result<(Vec<u8>, usize)>;

/// Reads the dump and hashes it on a thread of its own, a few blocks ahead, so that the dump
/// tool (and the server behind it) keeps going while the pipeline's thread compresses and
/// seals: a pipe holds only 64 KiB.
struct ReadAhead {
    /// Blocks read; `None` at the end of the dump.
    blocks: std::sync::mpsc::Receiver<Option<Block>>,
    /// Buffers handed back for reuse.
    empty: std::sync::mpsc::SyncSender<Vec<u8>>,
    /// The dump's SHA-256 and size, once it ended.
    thread: std::thread::JoinHandle<(String, u64)>,
}

impl ReadAhead {
    fn start(dump: impl Read + Send + 'static) -> io::Result<Self> {
        let (full, blocks) = std::sync::mpsc::sync_channel(READS_QUEUED);
        let (empty, empties) = std::sync::mpsc::sync_channel::<Vec<u8>>(READS_QUEUED);
        // When the pipeline stops early it drops its ends and returns; this thread then ends
        // at its next send, or when the dump tool is killed and its pipe closes.
        let thread = std::thread::Builder::new().name("vigil-dump-read".into()).spawn(move || {
            let mut dump = Hashing::new(dump);
            loop {
                let mut buffer = empties.try_recv().unwrap_or_else(|_| vec![0u8; READ_SIZE]);
                let read = loop {
                    match dump.read(&mut buffer) {
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let block = match read {
                    Ok(0) => None,
                    Ok(n) => Some(Ok((buffer, n))),
                    Err(err) => Some(Err(err)),
                };
                let last = !matches!(block, Some(Ok(_)));
                if full.send(block).is_err() || last {
                    let (_, sha256, bytes) = dump.finish();
                    return (sha256, bytes);
                }
            }
        })?;
        Ok(Self { blocks, empty, thread })
    }
}

fn reader_gone() -> io::Error {
    io::Error::other("the dump's reader thread stopped")
}

/// Why reading a backup back failed: the check that failed, or the reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The object's format checks (header, key, segments, truncation).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The authenticated plaintext is not a zstd stream: it was written wrong.
    #[error("decompression check failed: {0}")]
    Decompress(String),
    /// The sink (a file, standard output, `pg_restore`) failed.
    #[error("writing the dump failed: {0}")]
    Sink(io::Error),
}

/// Reads the sealed object from `object`, opens and decompresses it, and writes the dump to
/// `sink`. Every byte written to the sink has been authenticated; an error means the object
/// is not the backup it claims to be (or was read wrong), and says which check failed.
pub fn open(object: impl Read, key: &DataKey, backup_id: &str, sink: impl Write) -> Result<StreamFacts, OpenError> {
    let mut object = Hashing::new(object);
    let opener = Opener::new(&mut object, key, backup_id)?;
    let mut compressed = Counting::new(opener);
    let mut decoder =
        zstd::stream::read::Decoder::new(&mut compressed).map_err(|err| OpenError::Decompress(err.to_string()))?;
    let mut sink = Hashing::new(sink);
    let mut buffer = vec![0u8; READ_SIZE];
    loop {
        let n = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(read_error(err)),
        };
        sink.write_all(&buffer[..n]).map_err(OpenError::Sink)?;
    }
    sink.flush().map_err(OpenError::Sink)?;
    drop(decoder);
    // zstd stops at the end of its frame: whatever follows must still authenticate, and the
    // final segment must be there.
    io::copy(&mut compressed, &mut io::sink()).map_err(read_error)?;
    let (_, plaintext_sha256, plaintext_bytes) = sink.finish();
    let (_, compressed_bytes) = compressed.finish();
    let (_, ciphertext_sha256, ciphertext_bytes) = object.finish();
    Ok(StreamFacts { plaintext_bytes, plaintext_sha256, compressed_bytes, ciphertext_bytes, ciphertext_sha256 })
}

/// Counts the bytes passing between zstd and the segments: their size is a manifest fact, their
/// hash would be a third one over the same data.
struct Counting<T> {
    inner: T,
    bytes: u64,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Self { inner, bytes: 0 }
    }

    fn finish(self) -> (T, u64) {
        (self.inner, self.bytes)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A read error from inside the stack: a format check's, or else a decompression failure.
fn read_error(err: io::Error) -> OpenError {
    if err.get_ref().is_some_and(|inner| inner.is::<FormatError>()) {
        let inner = err.into_inner().expect("checked above");
        return OpenError::Format(*inner.downcast::<FormatError>().expect("checked above"));
    }
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::Other => OpenError::Decompress(err.to_string()),
        _ => OpenError::Format(FormatError::Io(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::dump::UntilClosed;

    fn dump(len: usize) -> Vec<u8> {
        // Compressible but not trivially: text with a slowly changing counter.
        (0..len).map(|i| b"abcdefghij"[(i / 7 + i / 1000) % 10]).collect()
    }

    fn sealed(plain: &[u8], key: &DataKey) -> (Vec<u8>, StreamFacts) {
        let (sender, mut receiver) = mpsc::channel(CHUNKS_QUEUED);
        let plain = plain.to_vec();
        let key_bytes = *key.expose();
        let writer = std::thread::spawn(move || {
            let key = DataKey::from_bytes(&key_bytes).unwrap();
            seal(io::Cursor::new(plain), &key, "b1", 4096, sender, &|_| {}).unwrap()
        });
        let mut object = Vec::new();
        loop {
            match receiver.blocking_recv() {
                Some(Chunk::Data(bytes)) => object.extend_from_slice(&bytes),
                Some(Chunk::End) => break,
                None => panic!("ended without End"),
            }
        }
        (object, writer.join().unwrap())
    }

    #[test]
    fn a_sealed_dump_opens_to_the_same_bytes_and_hashes() {
        let key = DataKey::generate();
        let plain = dump(3 << 20);
        let (object, written) = sealed(&plain, &key);
        assert_eq!(written.ciphertext_bytes, object.len() as u64);
        assert!(written.compressed_bytes < written.plaintext_bytes / 4);
        let mut out = Vec::new();
        let read = open(&object[..], &key, "b1", &mut out).unwrap();
        assert_eq!(out, plain);
        assert_eq!(read, written);
    }

    #[test]
    fn pg_restore_style_readers_that_stop_early_do_not_stop_the_checks() {
        let key = DataKey::generate();
        let (object, written) = sealed(&dump(1 << 20), &key);
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let read = open(&object[..], &key, "b1", UntilClosed::new(writer)).unwrap();
        assert_eq!(read.ciphertext_sha256, written.ciphertext_sha256);
        let mut cut = object.clone();
        cut.truncate(object.len() - 10);
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        assert!(matches!(open(&cut[..], &key, "b1", UntilClosed::new(writer)), Err(OpenError::Format(_))));
    }
}
