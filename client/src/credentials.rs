//! A user's credentials for a node that runs with users (`kvs-node --auth-file`).
//!
//! They travel as gRPC metadata `authorization: Basic base64(name:password)` on every attempt
//! of every call, marked sensitive so HTTP/2 header compression never indexes them. The
//! password is a [`Password`], whose `Debug` prints `***`, so a client's options can be logged
//! or printed in a panic without leaking it.

use std::fmt;
use std::path::Path;

use base64::Engine;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

use crate::error::{Error, Result};

/// The metadata key credentials travel under.
const AUTHORIZATION: &str = "authorization";

/// A password; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password as given.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user name and its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: Password,
}

impl Credentials {
    /// The credentials of `user`. A name is refused if it is empty or holds a `:`, which the
    /// `Basic` scheme cannot carry.
    pub fn new(user: impl Into<String>, password: Password) -> Result<Self> {
        let user = user.into();
        if user.is_empty() || user.contains(':') {
            return Err(Error::InvalidCredentials(
                "a user name must not be empty or contain ':'".into(),
            ));
        }
        Ok(Credentials { user, password })
    }

    /// The credentials of `user` with the password in the file at `path`: its whole content
    /// but one final line break, as `kubectl create secret --from-file` and editors leave it.
    pub fn from_password_file(user: impl Into<String>, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidCredentials(format!("cannot read {}: {e}", path.display()))
        })?;
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(Error::InvalidCredentials(format!(
                "{} holds no password",
                path.display()
            )));
        }
        Credentials::new(user, Password::new(password))
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Adds these credentials to a request's metadata.
    pub fn authorize(&self, metadata: &mut MetadataMap) {
        metadata.insert(AUTHORIZATION, self.header());
    }

    fn header(&self) -> MetadataValue<Ascii> {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password.0));
        let mut value: MetadataValue<Ascii> = format!("Basic {encoded}")
            .parse()
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

/// For raw `kvs.v1` clients: `KvClient::with_interceptor(channel, credentials)`.
impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.authorize(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_basic_and_debug_output_hides_the_password() {
        let credentials = Credentials::new("alice", Password::new("s3cret")).expect("valid");
        let mut metadata = MetadataMap::new();
        credentials.authorize(&mut metadata);
        let value = metadata.get(AUTHORIZATION).expect("set");
        assert_eq!(value.to_str().expect("ascii"), "Basic YWxpY2U6czNjcmV0");
        assert!(value.is_sensitive());
        let shown = format!("{credentials:?} {metadata:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("YWxpY2U6czNjcmV0"),
            "{shown}"
        );
    }

    #[test]
    fn a_password_file_loses_one_final_line_break_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        for (content, password) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw", "pw"),
            (" pw \n\n", " pw \n"),
        ] {
            std::fs::write(&path, content).expect("write");
            let credentials = Credentials::from_password_file("u", &path).expect("read");
            assert_eq!(credentials.password, Password::new(password), "{content:?}");
        }
        std::fs::write(&path, "\n").expect("write");
        assert!(Credentials::from_password_file("u", &path).is_err());
        assert!(Credentials::new("a:b", Password::new("x")).is_err());
    }
}
