//! A real S3-compatible server for the backup tests: Python's moto in server mode
//! (`pip install 'moto[server]'`, done by `tests/run.sh`), on 127.0.0.1 with a bucket of its
//! own. The tests look at the bucket through boto3, a second S3 client independent of the
//! `object_store` crate that kvsctl and the operator use.

use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::ChildGuard;
use crate::process::free_port;
use crate::wait::wait_for;

/// How long moto may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one boto3 call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The bucket every server is started with.
pub(crate) const BUCKET: &str = "kvs-backups";

/// A moto S3 server, killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    _child: ChildGuard,
    port: u16,
}

impl S3Server {
    /// Starts moto on a free port and creates [`BUCKET`].
    pub async fn start() -> S3Server {
        let port = free_port();
        let child = ChildGuard::spawn(
            Command::new("python3")
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap_or_else(|e| panic!("cannot start moto (pip install 'moto[server]'): {e}"));
        let server = S3Server {
            _child: child,
            port,
        };
        wait_for(START_TIMEOUT, "moto creates the bucket", || async {
            server
                .boto(&format!("s3.create_bucket(Bucket='{BUCKET}')"), &[])
                .await
                .ok()
        })
        .await;
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// The variables that point kvsctl at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The keys in the bucket under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .boto(
                &format!(
                    "print('\\n'.join(o['Key'] for o in \
                     s3.list_objects_v2(Bucket='{BUCKET}', Prefix=sys.argv[1]).get('Contents', [])))"
                ),
                &[prefix],
            )
            .await
            .expect("list the bucket");
        let mut keys: Vec<String> = listed.lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted. Asked with one plain HTTP
    /// request (moto does not check signatures), fast enough to poll while an upload runs.
    pub async fn open_uploads(&self) -> usize {
        let ask = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
            let request = format!(
                "GET /{BUCKET}?uploads HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            stream.write_all(request.as_bytes()).await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, ask)
            .await
            .expect("moto answers in time")
            .expect("moto lists the uploads");
        assert_eq!(
            response.split_whitespace().nth(1),
            Some("200"),
            "listing the uploads: {response}"
        );
        response.matches("<UploadId>").count()
    }

    /// Downloads `key` into `to` with boto3.
    pub async fn download(&self, key: &str, to: &Path) {
        self.boto(
            &format!("s3.download_file('{BUCKET}', sys.argv[1], sys.argv[2])"),
            &[key, to.to_str().expect("utf-8 path")],
        )
        .await
        .expect("download the object");
    }

    /// Overwrites `key` with the bytes of `from` with boto3.
    pub async fn upload(&self, from: &Path, key: &str) {
        self.boto(
            &format!("s3.upload_file(sys.argv[2], '{BUCKET}', sys.argv[1])"),
            &[key, from.to_str().expect("utf-8 path")],
        )
        .await
        .expect("upload the object");
    }

    /// Runs `statement` with `s3` a boto3 client of this server and `sys.argv[1..]` = `args`;
    /// returns its standard output.
    async fn boto(&self, statement: &str, args: &[&str]) -> Result<String, String> {
        let script = format!(
            "import sys, boto3\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{statement}\n",
            self.endpoint()
        );
        let run = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(CALL_TIMEOUT, run).await {
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("boto3 timed out".into()),
        }
    }
}
