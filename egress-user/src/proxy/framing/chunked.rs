//! The chunked body tracker: follows chunk sizes, extensions and trailers byte by byte (chunk
//! data is skipped in bulk by the caller), at least as strictly as hyper, so both always agree
//! where a chunked message ends.
use super::{
    MAX_CHUNK_EXTENSION_BYTES, MAX_CHUNK_SIZE_DIGITS, MAX_HEADERS, MAX_TRAILER_BYTES, Violation,
    is_field_byte, is_tchar,
};

#[derive(Debug)]
pub(super) struct Chunked {
    pub(super) at: ChunkAt,
    extension_bytes: usize,
    trailer_bytes: usize,
    trailer_lines: usize,
    pub(super) close: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum ChunkAt {
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size (hyper accepts it before `;` or CRLF).
    SizeSpace {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the empty line that ends the body).
    TrailerStart,
    /// In a trailer field's name, before its `:` (hyper parses trailers as header fields).
    TrailerName,
    TrailerValue,
    TrailerLf {
        last: bool,
    },
}

impl Chunked {
    pub(super) fn new(close: bool) -> Self {
        Self {
            at: ChunkAt::Size { digits: 0, size: 0 },
            extension_bytes: 0,
            trailer_bytes: 0,
            trailer_lines: 0,
            close,
        }
    }

    /// One byte of chunk framing (never a data byte). `Ok(true)` when the body has ended.
    pub(super) fn step(&mut self, b: u8) -> Result<bool, Violation> {
        self.at = match self.at {
            ChunkAt::Size { digits, size } => match (hex_value(b), b) {
                (Some(v), _) => {
                    if digits == MAX_CHUNK_SIZE_DIGITS {
                        return Err(Violation::INVALID_CHUNK_SIZE);
                    }
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(v)))
                        .ok_or(Violation::INVALID_CHUNK_SIZE)?;
                    ChunkAt::Size {
                        digits: digits + 1,
                        size,
                    }
                }
                (None, _) if digits == 0 => return Err(Violation::INVALID_CHUNK_SIZE),
                (None, b' ' | b'\t') => ChunkAt::SizeSpace { size },
                (None, b';') => ChunkAt::Extension { size },
                (None, b'\r') => ChunkAt::SizeLf { size },
                (None, _) => return Err(Violation::INVALID_CHUNK_SIZE),
            },
            ChunkAt::SizeSpace { size } => match b {
                b' ' | b'\t' => ChunkAt::SizeSpace { size },
                b';' => ChunkAt::Extension { size },
                b'\r' => ChunkAt::SizeLf { size },
                _ => return Err(Violation::INVALID_CHUNK_SIZE),
            },
            ChunkAt::Extension { size } => match b {
                b'\r' => ChunkAt::SizeLf { size },
                b if is_field_byte(b) => {
                    self.extension_bytes += 1;
                    if self.extension_bytes > MAX_CHUNK_EXTENSION_BYTES {
                        return Err(Violation::CHUNK_EXTENSIONS_TOO_LARGE);
                    }
                    ChunkAt::Extension { size }
                }
                _ => return Err(Violation::INVALID_CHUNK_EXTENSION),
            },
            ChunkAt::SizeLf { size } => match (b, size) {
                (b'\n', 0) => ChunkAt::TrailerStart,
                (b'\n', left) => ChunkAt::Data { left },
                _ => return Err(Violation::INVALID_CHUNK_SIZE),
            },
            // Data bytes are skipped in bulk by the caller.
            ChunkAt::Data { .. } => unreachable!("chunk data is not stepped through"),
            ChunkAt::DataCr => match b {
                b'\r' => ChunkAt::DataLf,
                _ => return Err(Violation::INVALID_CHUNK_END),
            },
            ChunkAt::DataLf => match b {
                b'\n' => ChunkAt::Size { digits: 0, size: 0 },
                _ => return Err(Violation::INVALID_CHUNK_END),
            },
            ChunkAt::TrailerStart => match b {
                b'\r' => ChunkAt::TrailerLf { last: true },
                b' ' | b'\t' => return Err(Violation::OBS_FOLD),
                b if is_tchar(b) => {
                    self.trailer_lines += 1;
                    if self.trailer_lines > MAX_HEADERS {
                        return Err(Violation::TRAILERS_TOO_LARGE);
                    }
                    self.trailer_byte()?;
                    ChunkAt::TrailerName
                }
                _ => return Err(Violation::INVALID_TRAILER),
            },
            ChunkAt::TrailerName => match b {
                b':' => {
                    self.trailer_byte()?;
                    ChunkAt::TrailerValue
                }
                b if is_tchar(b) => {
                    self.trailer_byte()?;
                    ChunkAt::TrailerName
                }
                _ => return Err(Violation::INVALID_TRAILER),
            },
            ChunkAt::TrailerValue => match b {
                b'\r' => ChunkAt::TrailerLf { last: false },
                b if is_field_byte(b) => {
                    self.trailer_byte()?;
                    ChunkAt::TrailerValue
                }
                _ => return Err(Violation::INVALID_TRAILER),
            },
            ChunkAt::TrailerLf { last } => match b {
                b'\n' if last => return Ok(true),
                b'\n' => ChunkAt::TrailerStart,
                _ => return Err(Violation::INVALID_TRAILER),
            },
        };
        Ok(false)
    }

    fn trailer_byte(&mut self) -> Result<(), Violation> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(Violation::TRAILERS_TOO_LARGE);
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
