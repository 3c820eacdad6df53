//! Backups in object storage: `s3://BUCKET/KEY` (any S3-compatible store) and `file:///PATH`,
//! written and read through the `object_store` crate so kvsctl and the operator share one
//! implementation.
//!
//! Rules this module keeps:
//! - **Never the whole backup in memory.** A save is a multipart upload fed as the leader's
//!   stream arrives, with at most [`PARTS_IN_FLIGHT`] parts of [`PART_BYTES`] in flight; a read
//!   is a sequence of ranged GETs of [`RANGE_BYTES`] handed one at a time to the checker.
//! - **Never an object that looks complete but is not.** The stream is checked (CRC32, key
//!   count, content checksum) while it is uploaded, and the multipart upload is completed only
//!   when the check passed; on any failure the upload is aborted, so no object appears at the
//!   key at all.
//! - The object holds the backup file byte for byte: any S3 tool's download of it is a valid
//!   backup file with the same [`BackupSummary`].

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use tokio::sync::mpsc;
use url::Url;

use crate::backup::{BackupEntry, BackupSummary, read_backup};
use crate::client::Client;
use crate::error::{Error, Result};

/// Size of one multipart part: S3's smallest allowed part.
pub const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploaded at once; the producer waits for one to finish before it buffers more.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Size of one ranged GET when a backup is read back.
pub const RANGE_BYTES: u64 = 4 * 1024 * 1024;
/// Pieces queued between the network and the checker.
const QUEUED_PIECES: usize = 2;

/// How to reach an S3-compatible store; everything left `None` takes the store's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// The store's URL, for S3-compatible stores other than AWS (`http://` is allowed).
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// The access key ID.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// A session token that goes with temporary credentials.
    pub session_token: Option<String>,
}

impl StoreOptions {
    /// The standard AWS variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`) and `AWS_ENDPOINT_URL`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            endpoint: var("AWS_ENDPOINT_URL"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }
}

/// One backup object: a store and the key in it.
#[derive(Clone, Debug)]
pub struct BackupLocation {
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: String,
}

impl BackupLocation {
    /// Whether `target` names an object (`s3://…` or `file://…`) rather than a local path.
    pub fn is_url(target: &str) -> bool {
        target.starts_with("s3://") || target.starts_with("file://")
    }

    /// The object at `url` (`s3://BUCKET/KEY` or `file:///PATH`).
    pub fn parse(url: &str, options: &StoreOptions) -> Result<Self> {
        let invalid = |why: String| Error::InvalidLocation {
            url: url.to_owned(),
            reason: why,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (store, path): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| invalid("no bucket".into()))?;
                let path =
                    Path::from_url_path(parsed.path()).map_err(|e| invalid(e.to_string()))?;
                let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                builder = builder.with_region(options.region.as_deref().unwrap_or("us-east-1"));
                if let Some(key) = &options.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &options.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                if let Some(token) = &options.session_token {
                    builder = builder.with_token(token);
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), path)
            }
            "file" => {
                let (store, path) =
                    object_store::parse_url(&parsed).map_err(|e| invalid(e.to_string()))?;
                (Arc::from(store), path)
            }
            other => return Err(invalid(format!("unsupported scheme {other:?}"))),
        };
        if path.as_ref().is_empty() {
            return Err(invalid("no object key".into()));
        }
        Ok(Self {
            store,
            path,
            url: url.to_owned(),
        })
    }

    /// The object's URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn failed(&self, what: &str, err: impl std::fmt::Display) -> Error {
        Error::Io(format!("cannot {what} {}: {err}", self.url))
    }

    /// Streams a backup from the cluster's leader into this object. `progress` is told the
    /// bytes received so far and the size the leader announced. The object exists only once
    /// the whole backup arrived and passed its checks.
    pub async fn save(
        &self,
        client: &Client,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<BackupSummary> {
        let mut snapshot = client.snapshot().await?;
        let expected = snapshot.expected_bytes();
        let upload = self
            .store
            .put_multipart(&self.path)
            .await
            .map_err(|e| self.failed("start the upload to", e))?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let (pieces, checker) = checker(|_| Ok(()));
        let mut received = 0u64;
        let streamed: Result<()> = async {
            while let Some(chunk) = snapshot.chunk().await? {
                received += chunk.len() as u64;
                upload
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.failed("upload to", e))?;
                upload.put(chunk.clone());
                // A closed checker has found damage; its verdict is awaited below.
                if pieces.send(chunk).await.is_err() {
                    break;
                }
                progress(received, expected);
            }
            Ok(())
        }
        .await;
        drop(pieces);
        let checked = checker.await.expect("the checker does not panic");
        match streamed.and(checked) {
            Ok(summary) => {
                upload
                    .finish()
                    .await
                    .map_err(|e| self.failed("complete the upload to", e))?;
                Ok(summary)
            }
            Err(err) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(url = %self.url, error = %abort, "cannot abort the upload");
                }
                Err(err)
            }
        }
    }

    /// Reads the whole object with ranged GETs and checks it, handing each key to `on_entry`;
    /// returns what it holds. Damage is an [`Error::InvalidBackup`].
    pub async fn read(
        &self,
        on_entry: impl FnMut(BackupEntry) -> Result<()> + Send + 'static,
    ) -> Result<BackupSummary> {
        let meta = self
            .store
            .head(&self.path)
            .await
            .map_err(|e| self.failed("read", e))?;
        let (pieces, checker) = checker(on_entry);
        let fetched: Result<()> = async {
            let mut at = 0;
            while at < meta.size {
                let end = meta.size.min(at + RANGE_BYTES);
                let piece = self
                    .store
                    .get_range(&self.path, at..end)
                    .await
                    .map_err(|e| self.failed("read", e))?;
                at = end;
                if pieces.send(piece).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(pieces);
        let checked = checker.await.expect("the checker does not panic");
        fetched?;
        checked.map_err(|err| match err {
            Error::InvalidBackup(why) => Error::InvalidBackup(format!("{}: {why}", self.url)),
            other => other,
        })
    }

    /// Deletes the object (retention); an object already gone is not an error.
    pub async fn delete(&self) -> Result<()> {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", e)),
        }
    }
}

/// A blocking task that checks the backup whose bytes arrive on the returned sender.
fn checker(
    on_entry: impl FnMut(BackupEntry) -> Result<()> + Send + 'static,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Result<BackupSummary>>,
) {
    let (tx, rx) = mpsc::channel(QUEUED_PIECES);
    let task = tokio::task::spawn_blocking(move || {
        read_backup(
            PieceReader {
                pieces: rx,
                current: Bytes::new(),
            },
            on_entry,
        )
    });
    (tx, task)
}

/// A blocking [`Read`] over pieces sent from async code; the end of the pieces is the end of
/// the file.
struct PieceReader {
    pieces: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.blocking_recv() {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupHeader, BackupWriter};

    fn location(dir: &std::path::Path, name: &str) -> BackupLocation {
        let url = format!("file://{}/{name}", dir.display());
        BackupLocation::parse(&url, &StoreOptions::default()).expect("a file URL")
    }

    #[test]
    fn urls_name_a_bucket_and_a_key() {
        let options = StoreOptions::default();
        assert!(BackupLocation::parse("s3://bucket/a/b.kvs", &options).is_ok());
        for bad in ["s3://bucket", "s3://bucket/", "gs2://x/y", "not a url"] {
            assert!(
                matches!(
                    BackupLocation::parse(bad, &options),
                    Err(Error::InvalidLocation { .. })
                ),
                "{bad}"
            );
        }
        assert!(BackupLocation::is_url("s3://b/k") && BackupLocation::is_url("file:///k"));
        assert!(!BackupLocation::is_url("backup.kvs"));
    }

    #[tokio::test]
    async fn a_backup_larger_than_a_range_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = BackupWriter::new(Vec::new(), &BackupHeader::default()).expect("header");
        let value = vec![7u8; 1 << 20];
        for i in 0..6 {
            writer
                .entry(format!("k{i}").as_bytes(), &value, 0)
                .expect("entry");
        }
        let bytes = writer.finish().expect("trailer");
        assert!(bytes.len() as u64 > RANGE_BYTES);
        std::fs::write(dir.path().join("good"), &bytes).expect("write");
        let summary = location(dir.path(), "good")
            .read(|_| Ok(()))
            .await
            .expect("valid");
        assert_eq!((summary.keys, summary.bytes), (6, bytes.len() as u64));

        std::fs::write(dir.path().join("cut"), &bytes[..bytes.len() - 1]).expect("write");
        let cut = location(dir.path(), "cut").read(|_| Ok(())).await;
        assert!(matches!(cut, Err(Error::InvalidBackup(_))), "{cut:?}");
        let missing = location(dir.path(), "missing").read(|_| Ok(())).await;
        assert!(matches!(missing, Err(Error::Io(_))), "{missing:?}");
    }
}
