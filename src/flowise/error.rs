//! Why a call to Flowise failed, and whether trying again later can help.

use std::time::Duration;

/// A failed call to Flowise.
#[derive(Debug, thiserror::Error)]
pub enum FlowiseError {
    /// No TCP/TLS connection (refused, unreachable, DNS).
    #[error("cannot connect to Flowise at {url}: {cause}")]
    Connect {
        url: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        cause: String,
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the request timeout.
    #[error("Flowise did not answer within {0:?}")]
    Timeout(Duration),
    /// 401: the API key is missing or wrong.
    #[error("Flowise refused the API key (401): {0}")]
    Unauthorized(String),
    /// 403: the API key lacks a permission.
    #[error("the Flowise API key lacks a permission (403): {0}")]
    Forbidden(String),
    /// Any other error status, with Flowise's message.
    #[error("Flowise answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The answer was not JSON: usually a wrong base URL (Flowise answers unknown routes with its
    /// UI's HTML and 200) or a gateway's error page.
    #[error(
        "Flowise answered {status} with {content_type:?} instead of JSON; is {url} the Flowise API?"
    )]
    NotJson {
        status: u16,
        content_type: String,
        url: String,
    },
    /// The answer was longer than the client reads.
    #[error("Flowise's answer is longer than {limit} bytes; is {url} the Flowise API?")]
    TooLarge { limit: usize, url: String },
    /// JSON that does not have the expected shape.
    #[error("Flowise answered JSON of an unexpected shape: {0}")]
    Decode(#[source] serde_json::Error),
    /// The request failed in another way (connection cut, protocol error).
    #[error("request to Flowise failed: {cause}")]
    Http {
        /// The innermost cause.
        cause: String,
        #[source]
        source: reqwest::Error,
    },
    /// Not sent: a create of the same chatflow went unanswered a moment ago and may still land
    /// ([`crate::flowise::CreatesInDoubt`]).
    /// The message stays the same while the doubt lasts: it goes into status, and a status that
    /// changed at every reconcile would trigger the next one at once, past the backoff.
    #[error(
        "a create of this chatflow went unanswered and may still land in Flowise; it is not sent \
         again until {window:?} after it was, unless the chatflow appears"
    )]
    CreateInDoubt {
        window: std::time::Duration,
        /// How long until it may be sent again.
        again_in: std::time::Duration,
    },
    /// Not sent: recording the create in the Chatflow's status first failed (so that any
    /// controller would know it may land, [`crate::flowise::CreatesInDoubt`]).
    #[error("the create was not sent: recording it in the Chatflow's status failed: {0}")]
    Unannounced(String),
    /// The API key given is not a valid header value.
    #[error("the Flowise API key is not a valid header value")]
    ApiKey,
    /// The HTTP client could not be built.
    #[error("cannot build the Flowise HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl FlowiseError {
    /// Whether the same call may succeed later without anyone changing anything: connection
    /// problems, timeouts, 5xx, 429. Everything else (401, 403, 404, 400, 422, a wrong URL) needs
    /// a change of configuration or spec.
    pub fn transient(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Timeout(_)
            | Self::Http { .. }
            | Self::CreateInDoubt { .. }
            | Self::Unannounced(_) => true,
            Self::Status { status, .. } | Self::NotJson { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            Self::Unauthorized(_)
            | Self::Forbidden(_)
            | Self::Decode(_)
            | Self::TooLarge { .. }
            | Self::ApiKey
            | Self::Client(_) => false,
        }
    }

    /// Whether a write that failed so may have been carried out all the same, possibly later
    /// than the next look at Flowise: no answer in time, a connection cut after sending, or a
    /// gateway in front of Flowise that gave up on it (502, 503, 504).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_)
                | Self::Http { .. }
                | Self::Status {
                    status: 502..=504,
                    ..
                }
                // A gateway's error page, as most are.
                | Self::NotJson {
                    status: 502..=504,
                    ..
                }
        )
    }

    /// A short stable label for metrics and Event reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout(_) => "timeout",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Status { status: 404, .. } => "not_found",
            Self::Status {
                status: 400 | 412 | 422,
                ..
            } => "rejected",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "status",
            Self::NotJson { .. } => "not_json",
            Self::TooLarge { .. } => "too_large",
            Self::Decode(_) => "decode",
            Self::Http { .. } => "http",
            Self::CreateInDoubt { .. } => "create_in_doubt",
            Self::Unannounced(_) => "unannounced",
            Self::ApiKey => "api_key",
            Self::Client(_) => "client",
        }
    }

    /// The innermost cause of `error`: reqwest's own message ("error sending request") says
    /// less than the I/O error under it.
    pub(crate) fn cause(error: &reqwest::Error) -> String {
        let mut cause: &dyn std::error::Error = error;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        cause.to_string()
    }

    /// Classifies an error status from Flowise with its message.
    pub(crate) fn from_status(status: u16, message: String) -> Self {
        match status {
            401 => Self::Unauthorized(message),
            403 => Self::Forbidden(message),
            _ => Self::Status { status, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> FlowiseError {
        FlowiseError::from_status(code, "x".into())
    }

    #[test]
    fn server_errors_and_timeouts_are_transient() {
        assert!(status(500).transient());
        assert!(status(503).transient());
        assert!(status(429).transient());
        assert!(FlowiseError::Timeout(Duration::from_secs(1)).transient());
        let gateway_page = FlowiseError::NotJson {
            status: 502,
            content_type: "text/html".into(),
            url: "http://f/".into(),
        };
        assert!(gateway_page.transient());
    }

    #[test]
    fn refusals_and_bad_requests_are_permanent() {
        for code in [400, 401, 403, 404, 412, 422] {
            assert!(!status(code).transient(), "{code}");
        }
        let html_instead_of_api = FlowiseError::NotJson {
            status: 200,
            content_type: "text/html".into(),
            url: "http://f/ui/".into(),
        };
        assert!(!html_instead_of_api.transient());
    }

    #[test]
    fn reasons_are_stable_labels() {
        assert_eq!(status(401).reason(), "unauthorized");
        assert_eq!(status(403).reason(), "forbidden");
        assert_eq!(status(404).reason(), "not_found");
        assert_eq!(status(422).reason(), "rejected");
        assert_eq!(status(500).reason(), "server_error");
        assert_eq!(status(418).reason(), "status");
    }
}
