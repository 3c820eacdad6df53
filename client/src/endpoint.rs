//! Endpoint strings and the gRPC channels behind them.
//!
//! Users and the `kvs-leader` hint both speak `host:port`, so that is the one normalized form:
//! it is what errors print and what a hint is matched against. Channels connect lazily, so a
//! client can be built while some nodes are down and every call finds out for itself.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

/// A validated, normalized `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address(String);

impl Address {
    /// Accepts `host:port`, `http://host:port` or `https://host:port` (whether a client speaks
    /// TLS is decided for all its endpoints at once: [`wants_tls`]).
    pub(crate) fn parse(endpoint: &str) -> Result<Self> {
        parse(endpoint).map(Address)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// A channel to this address; it connects on first use, over TLS when `tls` is given.
    pub(crate) fn channel(&self, dial: &Dial) -> Channel {
        let scheme = if dial.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.0))
            .expect("parse checked that the address makes a valid URI")
            .connect_timeout(dial.connect_timeout);
        match &dial.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .expect("Dial::new checked the TLS configuration"),
            None => endpoint,
        }
        .connect_lazy()
    }
}

/// How every node is dialled: the connect timeout, and TLS if the client speaks it.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
}

impl Dial {
    /// Checks that `tls` makes a usable configuration.
    pub(crate) fn new(connect_timeout: Duration, tls: Option<ClientTlsConfig>) -> Result<Self> {
        if let Some(tls) = &tls {
            Endpoint::from_static("https://localhost")
                .tls_config(tls.clone())
                .map_err(|e| Error::InvalidTls(tls_error_text(&e)))?;
        }
        Ok(Dial {
            connect_timeout,
            tls,
        })
    }
}

/// A transport error with its causes, which say what is wrong with the material.
fn tls_error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Whether an endpoint asks for TLS (`https://`).
pub(crate) fn wants_tls(endpoint: &str) -> bool {
    endpoint.trim().starts_with("https://")
}

fn parse(endpoint: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let trimmed = endpoint.trim();
    let address = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed);
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.contains('/') {
        return Err(invalid("expected host:port without a path"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("expected host:port"));
    };
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    // An IPv6 host must be bracketed, or its colons would be taken for the port separator.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid(
            "an IPv6 host must be written in brackets, as [::1]:7379",
        ));
    }
    if port.parse::<u16>().map_or(true, |port| port == 0) {
        return Err(invalid("the port must be a number from 1 to 65535"));
    }
    let address = format!("{host}:{port}");
    // The URI parser has the last word on what a host may contain.
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| invalid("not a valid host name or address"))?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_with_or_without_scheme() {
        assert_eq!(parse("127.0.0.1:7379").unwrap(), "127.0.0.1:7379");
        assert_eq!(parse("http://node-1.kvs:7379").unwrap(), "node-1.kvs:7379");
        assert_eq!(parse(" http://localhost:1/ ").unwrap(), "localhost:1");
        assert_eq!(parse("[::1]:7379").unwrap(), "[::1]:7379");
        assert_eq!(parse("https://node-1.kvs:7379").unwrap(), "node-1.kvs:7379");
    }

    #[test]
    fn rejects_what_is_not_host_port() {
        for bad in [
            "",
            "localhost",
            ":7379",
            "localhost:0",
            "localhost:99999",
            "localhost:port",
            "localhost:7379/kv",
            "::1:7379",
            "bad host:7379",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
