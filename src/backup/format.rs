//! The encrypted backup object: a header, then the compressed dump cut into fixed segments,
//! each sealed with AES-256-GCM as in the STREAM construction (Hoang, Reyhanitabar, Rogaway,
//! Vizár: "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance").
//!
//! Each segment's nonce is its index and a final flag, and its associated data binds the
//! header's hash, the index and the flag, so a flipped byte, a reordered, dropped or repeated
//! segment, a truncation and a spliced header all fail to open. The data key is fresh per
//! backup, so index-derived nonces never repeat under one key. From format version 2 the
//! AES-256-GCM key and the key-check HMAC key are derived from the data key with HKDF-SHA256
//! under distinct labels, so no key serves two algorithms; version 1 objects (the data key used
//! for both) still read. `docs/backup-format.md` specifies the layout for other implementations.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, hmac};
use zeroize::Zeroizing;

pub use crate::kms::DataKey;

/// The first bytes of every backup object.
pub const MAGIC: &[u8; 8] = b"VIGILBAK";
/// The format version this build writes.
pub const VERSION: u8 = 2;
/// The versions this build reads.
const READABLE: [u8; 2] = [1, 2];
/// Compression of the sealed plaintext: zstd.
const COMPRESSION_ZSTD: u8 = 1;
/// Bytes of the GCM tag after each segment.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per segment unless configured otherwise: large enough that tags cost
/// nothing, small enough that a reader holds one segment at a time.
pub const DEFAULT_SEGMENT_SIZE: u32 = 1 << 20;
/// Segment sizes accepted on read: a header claiming more is refused before any allocation.
const SEGMENT_SIZES: std::ops::RangeInclusive<u32> = 1024..=(16 << 20);
/// The longest backup id a header carries.
const MAX_ID_LEN: usize = 255;
/// Domain separation for the key check.
const KEY_CHECK_LABEL: &[u8] = b"vigil backup key check v1";

/// HKDF labels (`info`) of the version 2 subkeys; the salt is empty (the data key is already
/// uniformly random).
const AEAD_LABEL_V2: &[u8] = b"vigil backup v2 aes-256-gcm";
const KEY_CHECK_KEY_LABEL_V2: &[u8] = b"vigil backup v2 key check";

/// The subkey for `label`: HKDF-SHA256 of the data key (version 2), or the data key itself
/// (version 1).
fn subkey(key: &DataKey, version: u8, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new(*key.expose());
    if version >= 2 {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key.expose());
        prk.expand(&[label], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
    }
    out
}

/// The AEAD under `key`, for an object of `version`.
fn aead(key: &DataKey, version: u8) -> LessSafeKey {
    let key = subkey(key, version, AEAD_LABEL_V2);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("32 bytes is an AES-256 key"))
}

/// A commitment to `key` under `header`: GCM is not key-committing, so without it a wrong key
/// would show as a corrupt first segment instead of as the wrong key.
fn key_check(key: &DataKey, version: u8, header: &[u8]) -> [u8; 32] {
    let key = subkey(key, version, KEY_CHECK_KEY_LABEL_V2);
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_ref());
    let mut context = hmac::Context::with_key(&key);
    context.update(KEY_CHECK_LABEL);
    context.update(header);
    context.sign().as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// Why a backup object could not be read. Each variant names the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The object does not start with the magic bytes.
    #[error("header check failed: this is not a vigil backup (bad magic bytes)")]
    Magic,
    /// A version this build cannot read.
    #[error("header check failed: format version {0} is not supported by this vigil (it reads versions 1 and 2)")]
    Version(u8),
    /// A header field is out of range.
    #[error("header check failed: {0}")]
    Header(String),
    /// The header names another backup.
    #[error("header check failed: the object is backup {found}, not {expected}")]
    WrongBackup {
        /// The id the manifest names.
        expected: String,
        /// The id in the header.
        found: String,
    },
    /// The key check failed: the wrong data key, or an altered header.
    #[error("key check failed: the data key does not open this backup, or its header was altered")]
    KeyCheck,
    /// A segment did not authenticate.
    #[error("segment {index} failed authentication: the object was altered, or segments were dropped or reordered")]
    Segment {
        /// The segment's index, from 0.
        index: u64,
    },
    /// The stream ended after a segment that is not the final one.
    #[error("truncation check failed: the object ends after segment {index}, which is not the final segment")]
    Truncated {
        /// The last segment present.
        index: u64,
    },
    /// The stream ended inside the header.
    #[error("header check failed: the object ends inside its header")]
    ShortHeader,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<FormatError> for io::Error {
    fn from(err: FormatError) -> Self {
        match err {
            FormatError::Io(err) => err,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// The header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format version.
    pub version: u8,
    /// Plaintext bytes per segment.
    pub segment_size: u32,
    /// The backup id.
    pub backup_id: String,
}

impl Header {
    /// The header's bytes before the key check.
    fn prefix(&self) -> Vec<u8> {
        let id = self.backup_id.as_bytes();
        let mut out = Vec::with_capacity(16 + id.len());
        out.extend_from_slice(MAGIC);
        out.push(self.version);
        out.push(COMPRESSION_ZSTD);
        out.extend_from_slice(&self.segment_size.to_be_bytes());
        out.push(u8::try_from(id.len()).expect("backup ids are short"));
        out.extend_from_slice(id);
        out
    }
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes[11] = u8::from(last);
    Nonce::assume_unique_for_key(bytes)
}

fn aad(header_hash: &[u8; 32], index: u64, last: bool) -> [u8; 41] {
    let mut bytes = [0u8; 41];
    bytes[..32].copy_from_slice(header_hash);
    bytes[32..40].copy_from_slice(&index.to_be_bytes());
    bytes[40] = u8::from(last);
    bytes
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Seals a plaintext stream into segments written to `inner`. Write the plaintext, then call
/// [`Sealer::finish`]: without it the object has no final segment and will not open.
pub struct Sealer<W: Write> {
    inner: W,
    key: LessSafeKey,
    header_hash: [u8; 32],
    segment_size: usize,
    buffer: Vec<u8>,
    index: u64,
}

impl<W: Write> Sealer<W> {
    /// Writes the header for `backup_id` and returns a sealer for the segments.
    pub fn new(inner: W, key: &DataKey, backup_id: &str, segment_size: u32) -> Result<Self, FormatError> {
        Self::with_version(inner, key, backup_id, segment_size, VERSION)
    }

    /// As [`Sealer::new`], in format `version` (tests write version 1 to prove it still reads).
    fn with_version(
        mut inner: W,
        key: &DataKey,
        backup_id: &str,
        segment_size: u32,
        version: u8,
    ) -> Result<Self, FormatError> {
        if backup_id.len() > MAX_ID_LEN {
            return Err(FormatError::Header(format!("backup id is longer than {MAX_ID_LEN} bytes")));
        }
        if !SEGMENT_SIZES.contains(&segment_size) {
            return Err(FormatError::Header(format!("segment size {segment_size} is outside {SEGMENT_SIZES:?}")));
        }
        let header = Header { version, segment_size, backup_id: backup_id.to_owned() };
        let mut bytes = header.prefix();
        bytes.extend_from_slice(&key_check(key, version, &bytes));
        inner.write_all(&bytes)?;
        let segment_size = segment_size as usize;
        Ok(Self {
            inner,
            key: aead(key, version),
            header_hash: sha256(&bytes),
            segment_size,
            buffer: Vec::with_capacity(segment_size + TAG_LEN),
            index: 0,
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.index, last),
                Aad::from(aad(&self.header_hash, self.index, last)),
                &mut self.buffer,
            )
            .map_err(|_| io::Error::other("AES-GCM sealing failed"))?;
        self.buffer.extend_from_slice(tag.as_ref());
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals the final segment (possibly empty) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full buffer is sealed only when more data arrives, so that the last full segment
        // can still become the final one.
        if self.buffer.len() == self.segment_size && !data.is_empty() {
            self.seal(false)?;
        }
        let take = data.len().min(self.segment_size - self.buffer.len());
        self.buffer.extend_from_slice(&data[..take]);
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads and checks a backup object's header from `inner`.
pub fn read_header(inner: &mut impl Read) -> Result<(Header, Vec<u8>), FormatError> {
    let mut fixed = [0u8; 15];
    read_exact_or(inner, &mut fixed)?;
    if &fixed[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = fixed[8];
    if !READABLE.contains(&version) {
        return Err(FormatError::Version(version));
    }
    if fixed[9] != COMPRESSION_ZSTD {
        return Err(FormatError::Header(format!("unknown compression {}", fixed[9])));
    }
    let segment_size = u32::from_be_bytes(fixed[10..14].try_into().expect("4 bytes"));
    if !SEGMENT_SIZES.contains(&segment_size) {
        return Err(FormatError::Header(format!("segment size {segment_size} is outside {SEGMENT_SIZES:?}")));
    }
    let mut id = vec![0u8; usize::from(fixed[14])];
    read_exact_or(inner, &mut id)?;
    let mut check = [0u8; 32];
    read_exact_or(inner, &mut check)?;
    let backup_id = String::from_utf8(id).map_err(|_| FormatError::Header("the backup id is not UTF-8".to_owned()))?;
    let mut bytes = fixed.to_vec();
    bytes.extend_from_slice(backup_id.as_bytes());
    bytes.extend_from_slice(&check);
    Ok((Header { version, segment_size, backup_id }, bytes))
}

fn read_exact_or(inner: &mut impl Read, buf: &mut [u8]) -> Result<(), FormatError> {
    inner.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::ShortHeader,
        _ => FormatError::Io(err),
    })
}

/// Opens a sealed stream: reads the header, checks the key, and yields the plaintext of each
/// segment only after it authenticated. Ends with an error, not EOF, if the final segment is
/// missing.
pub struct Opener<R: Read> {
    inner: R,
    key: LessSafeKey,
    header_hash: [u8; 32],
    segment_size: usize,
    /// One sealed segment and one byte beyond it: the byte says whether this is the last.
    buffer: Vec<u8>,
    filled: usize,
    plain: std::ops::Range<usize>,
    index: u64,
    done: bool,
}

impl<R: Read> Opener<R> {
    /// Reads the header of the object in `inner` and checks that it is `backup_id`'s and that
    /// `key` opens it.
    pub fn new(mut inner: R, key: &DataKey, backup_id: &str) -> Result<Self, FormatError> {
        let (header, bytes) = read_header(&mut inner)?;
        let prefix_len = bytes.len() - 32;
        if key_check(key, header.version, &bytes[..prefix_len]).as_slice() != &bytes[prefix_len..] {
            return Err(FormatError::KeyCheck);
        }
        if header.backup_id != backup_id {
            return Err(FormatError::WrongBackup { expected: backup_id.to_owned(), found: header.backup_id });
        }
        let segment_size = header.segment_size as usize;
        Ok(Self {
            inner,
            key: aead(key, header.version),
            header_hash: sha256(&bytes),
            segment_size,
            buffer: vec![0; segment_size + TAG_LEN + 1],
            filled: 0,
            plain: 0..0,
            index: 0,
            done: false,
        })
    }

    /// Reads and opens the next segment into `buffer[plain]`.
    fn next_segment(&mut self) -> Result<(), FormatError> {
        let sealed = self.segment_size + TAG_LEN;
        while self.filled < sealed + 1 {
            match self.inner.read(&mut self.buffer[self.filled..]) {
                Ok(0) => break,
                Ok(n) => self.filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        let last = self.filled <= sealed;
        let len = self.filled.min(sealed);
        if len < TAG_LEN {
            return Err(if self.index == 0 {
                FormatError::Segment { index: 0 }
            } else {
                FormatError::Truncated { index: self.index - 1 }
            });
        }
        let index = self.index;
        // A full segment where the stream ends may be a non-final one whose successors were
        // cut off: kept to tell truncation from alteration, as a failed open clobbers it.
        let full_at_end = (last && len == sealed).then(|| self.buffer[..len].to_vec());
        let opened = self
            .key
            .open_in_place(nonce(index, last), Aad::from(aad(&self.header_hash, index, last)), &mut self.buffer[..len])
            .map(|plain| plain.len());
        let Ok(plain_len) = opened else {
            let cut = full_at_end.is_some_and(|mut sealed| {
                let aad = Aad::from(aad(&self.header_hash, index, false));
                self.key.open_in_place(nonce(index, false), aad, &mut sealed).is_ok()
            });
            return Err(if cut { FormatError::Truncated { index } } else { FormatError::Segment { index } });
        };
        self.plain = 0..plain_len;
        self.index += 1;
        if last {
            self.done = true;
            self.filled = 0;
        } else {
            // The byte read beyond this segment starts the next one; it moves to the front
            // once this segment's plaintext has been read out.
            self.filled = sealed + 1;
        }
        Ok(())
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.plain.is_empty() {
            if self.done {
                return Ok(0);
            }
            if self.filled > self.segment_size + TAG_LEN {
                let sealed = self.segment_size + TAG_LEN;
                self.buffer[0] = self.buffer[sealed];
                self.filled = 1;
            }
            self.next_segment()?;
            if self.plain.is_empty() {
                // Only the final segment may be empty.
                return Ok(0);
            }
        }
        let n = out.len().min(self.plain.len());
        out[..n].copy_from_slice(&self.buffer[self.plain.start..self.plain.start + n]);
        self.plain.start += n;
        Ok(n)
    }
}

/// A SHA-256 running over everything written or read through it.
pub struct Sha256(digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hex digest.
    pub fn hex(self) -> String {
        hex::encode(self.0.finish().as_ref())
    }
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hash: Sha256::default(), bytes: 0 }
    }

    /// The inner writer or reader, the hex SHA-256 and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, self.hash.hex(), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hash.update(&out[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261124T030000Z-0a1b2c3d";

    fn seal(key: &DataKey, plain: &[u8], segment: u32) -> Vec<u8> {
        let mut sealer = Sealer::new(Vec::new(), key, ID, segment).unwrap();
        // Odd write sizes, so that segment boundaries fall inside writes.
        for chunk in plain.chunks(777) {
            sealer.write_all(chunk).unwrap();
        }
        sealer.finish().unwrap()
    }

    fn open(key: &DataKey, object: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut opener = Opener::new(object, key, ID)?;
        let mut out = Vec::new();
        opener.read_to_end(&mut out).map_err(|err| match err.into_inner().map(|e| e.downcast::<FormatError>()) {
            Some(Ok(format)) => *format,
            other => panic!("not a format error: {other:?}"),
        })?;
        Ok(out)
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn header_len() -> usize {
        15 + ID.len() + 32
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let key = DataKey::generate();
        for len in [0, 1, 1023, 1024, 1025, 2048, 5000] {
            let plain = plaintext(len);
            let object = seal(&key, &plain, 1024);
            // The final segment holds the last 1..=1024 bytes (none only when there are none).
            let segments = len.div_ceil(1024).max(1);
            assert_eq!(object.len(), header_len() + len + segments * TAG_LEN, "{len}");
            assert_eq!(open(&key, &object).unwrap(), plain, "{len}");
        }
    }

    #[test]
    fn version_1_objects_still_open_and_version_2_keys_are_derived() {
        let key = DataKey::generate();
        let plain = plaintext(3000);
        let mut v1 = Sealer::with_version(Vec::new(), &key, ID, 1024, 1).unwrap();
        v1.write_all(&plain).unwrap();
        let v1 = v1.finish().unwrap();
        assert_eq!(v1[8], 1);
        assert_eq!(open(&key, &v1).unwrap(), plain);
        let v2 = seal(&key, &plain, 1024);
        assert_eq!(v2[8], VERSION);
        assert_eq!(open(&key, &v2).unwrap(), plain);
        // The same header under either version: only the derived keys tell them apart.
        assert_ne!(key_check(&key, 1, b"header"), key_check(&key, 2, b"header"));
        assert_ne!(*subkey(&key, 2, AEAD_LABEL_V2), *subkey(&key, 2, KEY_CHECK_KEY_LABEL_V2));
        assert_ne!(*subkey(&key, 2, AEAD_LABEL_V2), *key.expose());
        // A version 1 header relabelled as version 2 fails the key check, not a segment.
        let mut relabelled = v1.clone();
        relabelled[8] = 2;
        assert!(matches!(open(&key, &relabelled), Err(FormatError::KeyCheck)));
        let mut unknown = v2.clone();
        unknown[8] = 3;
        assert!(matches!(open(&key, &unknown), Err(FormatError::Version(3))));
    }

    #[test]
    fn a_wrong_key_fails_the_key_check() {
        let object = seal(&DataKey::generate(), &plaintext(3000), 1024);
        assert!(matches!(open(&DataKey::generate(), &object), Err(FormatError::KeyCheck)));
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let key = DataKey::generate();
        let object = seal(&key, &plaintext(2500), 1024);
        for at in 0..object.len() {
            let mut bad = object.clone();
            bad[at] ^= 0x01;
            assert!(open(&key, &bad).is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn truncation_at_a_segment_boundary_names_the_last_segment() {
        let key = DataKey::generate();
        let object = seal(&key, &plaintext(3000), 1024);
        let cut = header_len() + 2 * (1024 + TAG_LEN);
        assert!(matches!(open(&key, &object[..cut]), Err(FormatError::Truncated { index: 1 })));
        assert!(matches!(open(&key, &object[..header_len()]), Err(FormatError::Segment { index: 0 })));
    }

    #[test]
    fn dropped_and_swapped_segments_fail_where_they_happen() {
        let key = DataKey::generate();
        let object = seal(&key, &plaintext(4000), 1024);
        let (head, body) = object.split_at(header_len());
        let segments: Vec<&[u8]> = body.chunks(1024 + TAG_LEN).collect();
        let dropped: Vec<u8> = [head, segments[0], segments[2], segments[3]].concat();
        assert!(matches!(open(&key, &dropped), Err(FormatError::Segment { index: 1 })));
        let swapped: Vec<u8> = [head, segments[0], segments[2], segments[1], segments[3]].concat();
        assert!(matches!(open(&key, &swapped), Err(FormatError::Segment { index: 1 })));
    }

    #[test]
    fn an_object_of_another_backup_is_refused() {
        let key = DataKey::generate();
        let object = seal(&key, b"dump", 1024);
        assert!(matches!(Opener::new(&object[..], &key, "other"), Err(FormatError::WrongBackup { .. })));
    }
}
