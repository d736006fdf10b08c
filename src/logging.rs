//! The server's logger: `env_logger` (`RUST_LOG`, default `info`) with one exception. actix-http
//! logs an ERROR line for every HTTP connection that ends in a client's fault: a request it
//! cannot parse (bad header bytes, a broken request line), one that never completes, a
//! connection reset. Anyone who can reach the web port can cause those, so a scanner could
//! fill the error log. Those lines go out at debug instead and are counted by kind
//! (`dtu_http_client_errors_total{kind}` on `/metrics`).

use log::{Level, Log, Metadata, Record};

use crate::metrics::METRICS;

/// Where actix-http reports a connection that ended in an error, and how the line begins.
const HTTP_DISPATCHER: &str = "actix_http::h1::dispatcher";
const STREAM_ERROR: &str = "stream error: ";

/// Installs the logger; call once, first thing.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(ServerLogger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct ServerLogger {
    inner: env_logger::Logger,
}

/// What a client did wrong, by actix-http's line about it; None for any other line.
fn client_error(level: Level, target: &str, message: &str) -> Option<ClientError> {
    if level != Level::Error || target != HTTP_DISPATCHER {
        return None;
    }
    let rest = message.strip_prefix(STREAM_ERROR)?;
    if rest.starts_with("request parse error") {
        Some(ClientError::Parse)
    } else if rest.starts_with("request did not complete") {
        Some(ClientError::Timeout)
    } else if rest.starts_with("I/O error") {
        Some(ClientError::Io)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientError {
    Parse,
    Timeout,
    Io,
}

impl Log for ServerLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.level() == Level::Error && record.target() == HTTP_DISPATCHER {
            let message = record.args().to_string();
            if let Some(kind) = client_error(record.level(), record.target(), &message) {
                let counter = match kind {
                    ClientError::Parse => &METRICS.http_parse_errors,
                    ClientError::Timeout => &METRICS.http_timeouts,
                    ClientError::Io => &METRICS.http_io_errors,
                };
                counter.inc();
                let quiet = Metadata::builder()
                    .level(Level::Debug)
                    .target(record.target())
                    .build();
                if self.inner.enabled(&quiet) {
                    self.inner.log(
                        &Record::builder()
                            .metadata(quiet)
                            .module_path(record.module_path())
                            .file(record.file())
                            .line(record.line())
                            .args(format_args!("{message}"))
                            .build(),
                    );
                }
                return;
            }
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_actix_http_client_errors_are_quieted() {
        let parse = "stream error: request parse error: invalid Header provided";
        let error = |target: &str, message: &str| client_error(Level::Error, target, message);
        assert_eq!(error(HTTP_DISPATCHER, parse), Some(ClientError::Parse));
        assert_eq!(
            error(
                HTTP_DISPATCHER,
                "stream error: request did not complete within the specified timeout"
            ),
            Some(ClientError::Timeout)
        );
        assert_eq!(
            error(
                HTTP_DISPATCHER,
                "stream error: I/O error: Connection reset by peer"
            ),
            Some(ClientError::Io)
        );
        assert_eq!(client_error(Level::Warn, HTTP_DISPATCHER, parse), None);
        assert_eq!(error("dtu_supervisor::web", parse), None);
        assert_eq!(error(HTTP_DISPATCHER, "stream error: service error"), None);
        assert_eq!(
            error(HTTP_DISPATCHER, "Internal server error: unexpected eof"),
            None
        );
    }
}
