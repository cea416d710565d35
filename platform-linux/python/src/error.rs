//! Python exceptions: [`VoxringError`] and its subclasses, each carrying the Rust error's
//! what/why/what-to-do text and a short code name (`VR_E_*`, the names of the C ABI).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use voxring_linux::fallback::FallbackError;
use voxring_linux::ring::ParticipantError;
use voxring_linux::segment::{AttachError, CreateError, FailureClass};
use voxring_linux::shared::PlaceError;

pyo3::create_exception!(
    _voxring,
    VoxringError,
    PyRuntimeError,
    "A voxring operation failed. `name` is its code (VR_E_*), the message says what happened, \
     why, and what to do."
);
pyo3::create_exception!(
    _voxring,
    ClosedError,
    VoxringError,
    "The Reader, Writer or Control was closed: open a new one."
);
pyo3::create_exception!(
    _voxring,
    ReleasedError,
    VoxringError,
    "A frame's grant was released (or committed): its slot belongs to the ring again."
);

/// A failure on its way to Python: the `VR_E_*` name and the full message.
#[derive(Debug)]
pub struct Failure {
    pub name: &'static str,
    pub msg: String,
}

pub type Res<T> = Result<T, Failure>;

impl Failure {
    pub fn new(name: &'static str, msg: impl Into<String>) -> Self {
        Failure {
            name,
            msg: msg.into(),
        }
    }

    /// Prefixes the message with what was being done (`open reader 'mic'`).
    pub fn context(mut self, what: &str) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        // The code ends the message, so a traceback shows it too.
        let msg = format!("{} [{}]", f.msg, f.name);
        let err = match f.name {
            "VR_E_CLOSED" => ClosedError::new_err(msg),
            "VR_E_RELEASED" => ReleasedError::new_err(msg),
            _ => VoxringError::new_err(msg),
        };
        Python::attach(|py| {
            // An attribute on a fresh exception object cannot fail; if it did, the message
            // still says everything.
            let _ = err.value(py).setattr("name", f.name);
        });
        err
    }
}

pub fn attach(e: AttachError) -> Failure {
    Failure::new(class_name(e.class(), "VR_E_ATTACH"), e.to_string())
}

pub fn create(e: CreateError) -> Failure {
    Failure::new(class_name(e.class(), "VR_E_CREATE"), e.to_string())
}

/// The `VR_E_*` name of a failure's class (as the C ABI's code); `other` for the rest.
fn class_name(c: FailureClass, other: &'static str) -> &'static str {
    match c {
        FailureClass::NotFound => "VR_E_NOT_FOUND",
        FailureClass::Permission => "VR_E_PERMISSION",
        FailureClass::Invalid => "VR_E_INVALID",
        FailureClass::Exists => "VR_E_EXISTS",
        FailureClass::Other => other,
    }
}

pub fn place(e: PlaceError, otherwise: &'static str) -> Failure {
    match e {
        PlaceError::Create(e) => create(e),
        PlaceError::Attach(e) => attach(e),
        e => Failure::new(otherwise, e.to_string()),
    }
}

pub fn participant(e: ParticipantError) -> Failure {
    let name = match e {
        ParticipantError::ProducerTaken { .. } | ParticipantError::ConsumersFull { .. } => {
            "VR_E_BUSY"
        }
        ParticipantError::Truncated => "VR_E_TRUNCATED",
        _ => "VR_E_ATTACH",
    };
    Failure::new(name, e.to_string())
}

/// The name of an I/O failure: VR_E_PERMISSION when refused, else VR_E_IO.
pub fn io(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "VR_E_PERMISSION"
    } else {
        "VR_E_IO"
    }
}

pub fn fallback(e: &FallbackError) -> &'static str {
    match e {
        FallbackError::UnsafeDir { .. }
        | FallbackError::Symlink { .. }
        | FallbackError::PeerNotTrusted { .. } => "VR_E_PERMISSION",
        FallbackError::Name(_) => "VR_E_INVALID",
        _ => "VR_E_ATTACH",
    }
}

pub fn read(e: voxring_core::ReadError) -> Failure {
    use voxring_core::ReadError as E;
    let name = match e {
        E::Empty => "VR_E_EMPTY",
        E::Lost { .. } => "VR_E_LOST",
        E::Evicted => "VR_E_EVICTED",
        _ => "VR_E_CORRUPT",
    };
    Failure::new(name, e.to_string())
}

pub fn grant(e: voxring_core::GrantError) -> Failure {
    use voxring_core::GrantError as E;
    let name = match e {
        E::Full => "VR_E_FULL",
        E::Evicted => "VR_E_EVICTED",
        _ => "VR_E_CORRUPT",
    };
    Failure::new(name, e.to_string())
}

pub fn closed(what: &str) -> Failure {
    Failure::new(
        "VR_E_CLOSED",
        format!("this {what} is closed: it left the ring; open a new one to go on"),
    )
}
