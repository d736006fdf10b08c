//! What can go wrong in storage.

/// What went wrong. No message ever carries the password of the database URL.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL cannot be used (unknown scheme, backend not compiled in, malformed).
    #[error("database URL: {0}")]
    Url(String),
    /// The server (or file) could not be reached or opened, or no pooled connection was free.
    #[error("database connection: {0}")]
    Connect(String),
    /// The schema migrations failed.
    #[error("database migration: {0}")]
    Migration(String),
    /// A statement failed.
    #[error("database query: {0}")]
    Query(String),
    /// The blocking task of `Db::call` panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<diesel::result::Error> for StorageError {
    fn from(e: diesel::result::Error) -> Self {
        StorageError::Query(e.to_string())
    }
}
