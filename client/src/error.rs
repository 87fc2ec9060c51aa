//! Errors of the client.

use fjord_net::ErrorCode;
use std::net::SocketAddr;

/// What went wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached.
    #[error("cannot reach broker at {addr}: {message}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why (the OS's words).
        message: String,
    },
    /// The connection failed after it was made.
    #[error("connection to {addr} failed: {message}")]
    Connection {
        /// The broker.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// The broker answered with an error.
    #[error("broker error {code:?} ({}){}", code.code(), context.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Broker {
        /// Kafka's code.
        code: ErrorCode,
        /// What the broker or the client added.
        context: Option<String>,
    },
    /// The answer did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Settings that contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client (or producer) was closed.
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// A broker error with context.
    pub fn broker(code: ErrorCode, context: impl Into<String>) -> ClientError {
        ClientError::Broker {
            code,
            context: Some(context.into()),
        }
    }

    /// Whether trying again may succeed (Kafka's retriable errors, lost
    /// connections, timeouts).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Connect { .. }
            | ClientError::Connection { .. }
            | ClientError::Timeout(_) => true,
            ClientError::Protocol(_) | ClientError::Config(_) | ClientError::Closed => false,
        }
    }
}

/// The client's result.
pub type Result<T> = std::result::Result<T, ClientError>;

/// The error a Kafka error code stands for; `None` for 0. A code this build
/// does not know is still an error (UNKNOWN_SERVER_ERROR), never success.
pub fn error_code(code: i16) -> Option<ErrorCode> {
    (code != 0).then(|| ErrorCode::try_from_code(code).unwrap_or(ErrorCode::UnknownServerError))
}

/// `Ok` for code 0, else the broker's error with `context` (what it was
/// about, e.g. `topic-3`).
pub fn check(code: i16, context: impl FnOnce() -> String) -> Result<()> {
    match error_code(code) {
        None => Ok(()),
        Some(code) => Err(ClientError::broker(code, context())),
    }
}
