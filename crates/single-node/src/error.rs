//! The crate's one error type: every variant says what went wrong and, where the caller can do
//! something about it, what to do.

use crate::model::SandboxState;

/// Errors from the single-node runtime.
///
/// The E2B layer maps each variant to one HTTP status (see [`Error::kind`]); the messages are
/// written to be shown to a user as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or asks for something impossible (bad id, 0 CPUs, a timeout
    /// past the maximum). Nothing was changed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The driver (or this build) cannot do the operation at all.
    #[error("unsupported capability: {0}")]
    UnsupportedCapability(String),
    /// Admission refused the sandbox: the host is full. Retry after other sandboxes end, or
    /// raise the capacity in the configuration.
    #[error("capacity rejected: {0}")]
    CapacityRejected(String),
    /// Free disk space or inodes at the state root are below the configured floor, or could
    /// not be measured (the guard fails closed).
    #[error("disk pressure: {0}")]
    DiskPressure(String),
    /// No live sandbox has this id.
    #[error("sandbox {0} was not found")]
    SandboxNotFound(String),
    /// No snapshot (or template) has this id.
    #[error("snapshot {0} was not found")]
    SnapshotNotFound(String),
    /// No ready template has this name; the message is E2B's (`template '<x>' not found`,
    /// `tag '<t>' does not exist for template '<x>'`).
    #[error("{0}")]
    TemplateNotFound(String),
    /// The id is already taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The sandbox is in a state that does not allow the operation (for example pausing a
    /// paused sandbox).
    #[error("sandbox {sandbox_id} is {from}; it cannot become {to}")]
    InvalidTransition {
        /// The sandbox concerned.
        sandbox_id: String,
        /// Its current state.
        from: SandboxState,
        /// The state the operation needed to move it to.
        to: SandboxState,
    },
    /// A template's ready command failed.
    #[error("template build failed: {0}")]
    TemplateBuildFailed(String),
    /// The runtime driver failed to create, start or tear down a sandbox.
    #[error("runtime launch failed: {0}")]
    RuntimeLaunchFailed(String),
    /// A command inside a sandbox could not be run.
    #[error("runtime command failed: {0}")]
    RuntimeCommandFailed(String),
    /// The state database could not be opened, read or written.
    #[error("state persistence failed: {message}")]
    StatePersistenceFailed {
        /// What was being done, with the path where there is one.
        message: String,
        /// The underlying cause, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Coarse classes of [`Error`], for callers that map errors to protocol statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input: 400.
    InvalidRequest,
    /// Not built or not possible with this driver: 501.
    Unsupported,
    /// Host full, or disk below its floor: 503/507-like, retryable later.
    Capacity,
    /// Unknown sandbox or snapshot: 404.
    NotFound,
    /// Duplicate id or wrong state: 409.
    Conflict,
    /// Everything else: 500.
    Internal,
}

impl Error {
    /// Build a [`Error::StatePersistenceFailed`] with a cause.
    pub(crate) fn persistence(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::StatePersistenceFailed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Build a [`Error::StatePersistenceFailed`] without a cause.
    pub(crate) fn persistence_msg(message: impl Into<String>) -> Self {
        Self::StatePersistenceFailed {
            message: message.into(),
            source: None,
        }
    }

    /// The class of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Self::UnsupportedCapability(_) => ErrorKind::Unsupported,
            Self::CapacityRejected(_) | Self::DiskPressure(_) => ErrorKind::Capacity,
            Self::SandboxNotFound(_) | Self::SnapshotNotFound(_) | Self::TemplateNotFound(_) => {
                ErrorKind::NotFound
            }
            Self::Conflict(_) | Self::InvalidTransition { .. } => ErrorKind::Conflict,
            Self::TemplateBuildFailed(_)
            | Self::RuntimeLaunchFailed(_)
            | Self::RuntimeCommandFailed(_)
            | Self::StatePersistenceFailed { .. } => ErrorKind::Internal,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Self::persistence("state database operation", error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
