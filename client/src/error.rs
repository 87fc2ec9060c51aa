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
            ClientError::Protocol(_) | ClientError::Closed => false,
        }
    }
}

/// The client's result.
pub type Result<T> = std::result::Result<T, ClientError>;
