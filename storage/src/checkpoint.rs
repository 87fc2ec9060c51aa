//! Small files replaced whole and atomically: a log's leader-epoch cache,
//! a partition's Raft hard state. A reader finds the old content or the new,
//! never a mix, and never half a file.
//!
//! [`write`] puts the bytes in `<name>.tmp` beside the target, fdatasyncs
//! it, renames it over the target and fdatasyncs the directory (so the
//! rename survives power loss). The bytes are framed:
//!
//! ```text
//! magic "FJCP" | len u32 | crc32 u32 (crc32fast over len and bytes) | bytes
//! ```
//!
//! (little-endian). [`read`] refuses a file whose frame does not check: a
//! torn or damaged checkpoint is an error for the caller to handle (rebuild
//! it, or stop), never data. Files are small and read whole, so they go
//! through the page cache (glommio's buffered files), not O_DIRECT.

use crate::error::{Result, StorageError};
use glommio::io::{BufferedFile, Directory, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The largest checkpoint a file may hold.
pub const BYTES_MAX: usize = 1 << 20;
const MAGIC: [u8; 4] = *b"FJCP";
const HEADER_BYTES: usize = 12;

/// The temporary file a write of `path` goes through.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn crc_of(len: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

/// The framed file content of `bytes`.
pub fn encode(bytes: &[u8]) -> Vec<u8> {
    assert!(
        bytes.len() <= BYTES_MAX,
        "checkpoint of {} bytes",
        bytes.len()
    );
    let len = bytes.len() as u32;
    let mut out = Vec::with_capacity(HEADER_BYTES + bytes.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc_of(len, bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes framed in `file`, or why the frame does not check.
pub fn decode(file: &[u8]) -> Result<&[u8], String> {
    if file.len() < HEADER_BYTES {
        return Err(format!("{} bytes: shorter than a header", file.len()));
    }
    if file[..4] != MAGIC {
        return Err("not a checkpoint file".into());
    }
    let field =
        |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    let len = field(4);
    let body = &file[HEADER_BYTES..];
    if len as usize > BYTES_MAX || body.len() != len as usize {
        return Err(format!(
            "header says {len} bytes, the file holds {}",
            body.len()
        ));
    }
    if crc_of(len, body) != field(8) {
        return Err("CRC mismatch".into());
    }
    Ok(body)
}

fn io_error(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

/// Replaces the file at `path` with `bytes`, atomically and durably; see
/// the module doc. At most [`BYTES_MAX`] bytes.
pub async fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("checkpoint of {} bytes exceeds {BYTES_MAX}", bytes.len()),
        ));
    }
    let _pending = crate::io_stats::pending("checkpoint", std::rc::Rc::from(path));
    let tmp = tmp_path(path);
    let file = BufferedFile::create(&tmp).await.map_err(io_error)?;
    let framed = encode(bytes);
    let len = framed.len();
    let written = file.write_at(framed, 0).await.map_err(io_error);
    let synced = match written {
        Ok(n) if n == len => file.fdatasync().await.map_err(io_error),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {len}"),
        )),
        Err(e) => Err(e),
    };
    let closed = file.close().await.map_err(io_error);
    synced?;
    closed?;
    glommio::io::rename(&tmp, path).await.map_err(io_error)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir_io(dir.unwrap_or(Path::new("."))).await
}

/// Syncs the directory `dir`, so that what was created, renamed or removed
/// in it survives power loss.
pub(crate) async fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_io(dir).await.map_err(|source| StorageError::Io {
        op: "sync",
        path: dir.to_path_buf(),
        source,
    })
}

async fn sync_dir_io(dir: &Path) -> io::Result<()> {
    // glommio 0.9's `Directory::open` opens its path at descriptor -1, not
    // at the working directory (AT_FDCWD): a relative path fails with
    // EBADF. `absolute` reads the working directory only, no file system.
    let dir = std::path::absolute(dir)?;
    let handle = Directory::open(&dir).await.map_err(io_error)?;
    let synced = handle.sync().await.map_err(io_error);
    handle.close().await.map_err(io_error)?;
    synced
}

/// The bytes last written to `path` by [`write`]; `None` if there is no
/// file. A file whose frame does not check is [`StorageError::Corrupt`].
pub async fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new().read(true).buffered_open(path).await {
        Ok(file) => file,
        Err(e) => {
            let e = io_error(e);
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(StorageError::Io {
                op: "open",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let content = read_whole(&file, path).await;
    let closed = file.close().await.map_err(StorageError::io("close", path));
    let content = content?;
    closed?;
    match decode(&content) {
        Ok(body) => Ok(Some(body.to_vec())),
        Err(reason) => Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason,
        }),
    }
}

async fn read_whole(file: &BufferedFile, path: &Path) -> Result<Vec<u8>> {
    let size = file
        .file_size()
        .await
        .map_err(StorageError::io("stat", path))?;
    if size > (HEADER_BYTES + BYTES_MAX) as u64 {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: format!("{size} bytes: larger than any checkpoint"),
        });
    }
    let read = file
        .read_at(0, size as usize)
        .await
        .map_err(StorageError::io("read", path))?;
    Ok(read.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let body = b"term 7 vote 3".to_vec();
        let framed = encode(&body);
        assert_eq!(decode(&framed), Ok(&body[..]));
        assert_eq!(decode(&encode(&[])), Ok(&[][..]));
        for at in 0..framed.len() {
            let mut flipped = framed.clone();
            flipped[at] ^= 0x20;
            assert!(decode(&flipped).is_err(), "flip at {at} accepted");
        }
        for len in 0..framed.len() {
            assert!(decode(&framed[..len]).is_err(), "cut at {len} accepted");
        }
        let mut longer = framed.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
