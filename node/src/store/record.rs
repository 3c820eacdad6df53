//! The record codec of everything kvs stores on disk: a format byte, a postcard body and a
//! CRC32 of both. The durable log's entries, vote and commit index, and snapshot metadata are all
//! records, so damage anywhere is reported naming what was damaged — never decoded into state.
//!
//! Every such report, for records and for the other stored or received formats (snapshot
//! encodings, snapshot files, log entries), is an [`invalid_data`] error.

use std::fmt;
use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the record encoding (format byte, postcard body, CRC32 of both).
pub(crate) const RECORD_FORMAT: u8 = 1;

/// An error saying that bytes read back or received are not what was written — damaged,
/// truncated, or of a format this binary does not know — rather than that reading them failed:
/// its kind is [`io::ErrorKind::InvalidData`], and `message` says what is wrong.
pub(crate) fn invalid_data(message: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// Encodes a record: format byte, postcard body, CRC32 of both (little endian).
pub(crate) fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    postcard::to_io(value, &mut out).expect("writing to a Vec cannot fail");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record sealed by [`seal`]; `what` names it in errors.
pub(crate) fn unseal<T: DeserializeOwned>(
    bytes: &[u8],
    what: &dyn Fn() -> String,
) -> io::Result<T> {
    let bad = |why: String| invalid_data(format_args!("{} is corrupt: {why}", what()));
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(bad("too short".into()));
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(bad("checksum mismatch".into()));
    }
    match body.split_first() {
        Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| bad(e.to_string())),
        Some((&format, _)) => Err(invalid_data(format_args!(
            "{} has record format {format}, newer than this kvs-node supports ({RECORD_FORMAT})",
            what()
        ))),
        None => Err(bad("empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_byte_is_reported_never_decoded() {
        let sealed = seal(&(7u64, "value".to_string()));
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 0x10;
            let err =
                unseal::<(u64, String)>(&damaged, &|| "record 7".into()).expect_err("damaged");
            assert!(err.to_string().contains("record 7"), "{err}");
        }
        assert_eq!(
            unseal::<(u64, String)>(&sealed, &|| "record 7".into()).expect("intact"),
            (7, "value".to_string())
        );
    }
}
