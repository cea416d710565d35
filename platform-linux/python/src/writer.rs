//! [`Writer`]: the producer side of a ring; its grants ([`WriteGrant`]) and frames
//! ([`WriteFrame`]), and its socket fallback server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use numpy::PyUntypedArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::types::{PyDict, PyList, PyTuple};
use voxring_core::{FrameFlags, RingConfig, SampleFormat, WriteToken};
use voxring_linux::fallback::{FallbackServer, default_socket_path};
use voxring_linux::ring::{Segment, ShmProducer, SpaceWait};
use voxring_linux::segment::{AttachOptions, CreateOptions};

use crate::cache::{Reuse, unshared};
use crate::config::{parse_format, parse_policy};
use crate::endpoint::{Endpoint, Frames};
use crate::error::{self, Failure};
use crate::memory::{Keep, Memory, lock, set_writable, view};
use crate::wait::Deadline;

struct State {
    /// The open write grant (core checks it on commit) and its frames.
    token: Option<(WriteToken, Vec<Py<WriteFrame>>, Arc<AtomicBool>)>,
    // Field order: the producer gives up its side before the fallback server (a consumer of
    // the ring) stops. `None` once closed.
    producer: Option<ShmProducer>,
    server: Option<FallbackServer>,
    /// The segment and the views' base: dropped on close, so the segment is unmapped (and
    /// removed, if this writer created it) once no view of it is left.
    segment: Option<Segment>,
    memory: Option<Py<Memory>>,
    /// Per slot (`seq % frames`), its cached view and WriteFrames (see [`Slot`]).
    slots: Vec<Option<Slot>>,
    xruns: u64,
    frames: u64,
}

/// A slot's cached objects: the writable view made for it last (with the payload's address it
/// was made for), reused for the slot's next grant when nothing but this cache holds it (no
/// numpy array made per grant; one the caller kept stays read-only and the slot gets a new
/// one), and its WriteFrame objects, reused likewise.
struct Slot {
    ptr: usize,
    view: Py<PyUntypedArray>,
    frames: Reuse<WriteFrame>,
}

/// The WriteFrame of granted frame `seq` at `ptr`: the slot's cached view (made writable
/// again: it was made read-only at its last commit) if nothing else holds it, else a new one,
/// cached; and a cached WriteFrame if nothing else holds one.
fn slot_frame(
    slots: &mut [Option<Slot>],
    seq: u64,
    mem: &Bound<'_, Memory>,
    (ptr, cap): (*mut u8, usize),
    format: voxring_core::SampleFormat,
) -> PyResult<Py<WriteFrame>> {
    let py = mem.py();
    let i = (seq % slots.len().max(1) as u64) as usize;
    let Some(entry) = slots.get_mut(i) else {
        return Err(Writer::closed_err());
    };
    let slot = match entry {
        Some(s) if s.ptr == ptr as usize && unshared(&s.view) => {
            set_writable(s.view.bind(py), true);
            s
        }
        _ => {
            let view = view(mem, ptr, cap, format, true)?.unbind();
            let frames = entry.take().map(|s| s.frames).unwrap_or_default();
            entry.insert(Slot {
                ptr: ptr as usize,
                view,
                frames,
            })
        }
    };
    let fresh = || WriteFrame {
        seq,
        sample_pos: 0,
        timestamp_ns: 0,
        flags: 0,
        len: cap as u32,
        capacity: cap as u32,
        samples: Some(slot.view.clone_ref(py)),
    };
    slot.frames.get(py, |f| *f = fresh(), fresh)
}

/// The producer side of ring `name`. See the package docs (`help(voxring.Writer)`).
#[pyclass(frozen, subclass, extends = Endpoint, module = "voxring._voxring")]
pub struct Writer {
    state: Mutex<State>,
    format: SampleFormat,
}

impl Writer {
    fn closed_err() -> PyErr {
        error::closed("Writer").into()
    }

    /// Ends the open grant: commits its first `k` frames (their metadata taken from the
    /// WriteFrame objects), abandons the rest; every view of it becomes read-only.
    fn finish(&self, py: Python<'_>, live: &AtomicBool, k: Option<usize>) -> PyResult<()> {
        let mut st = self.state(py);
        let st = &mut *st;
        let Some((token, frames, flag)) = st
            .token
            .take_if(|(_, _, f)| std::ptr::eq(Arc::as_ptr(f), live))
        else {
            return Ok(()); // committed already, or the writer was closed
        };
        flag.store(false, Ordering::Release);
        retire(py, &frames);
        let k = k.unwrap_or(frames.len());
        if k > frames.len() {
            return Err(PyValueError::new_err(format!(
                "commit of {k} frames, {} granted: pass at most {}",
                frames.len(),
                frames.len()
            )));
        }
        let Some(producer) = st.producer.as_mut() else {
            return Err(Self::closed_err());
        };
        let (p, waiter) = producer.parts();
        let mut xruns = 0;
        for (i, f) in frames.iter().take(k).enumerate() {
            let f = f.borrow(py);
            if let Some(mut slot) = p.token_frame_mut(token, i) {
                slot.set_sample_pos(f.sample_pos);
                slot.set_timestamp_ns(f.timestamp_ns);
                slot.set_flags(FrameFlags(f.flags));
                if slot.set_len(f.len).is_err() {
                    return Err(PyValueError::new_err(format!(
                        "frame {i}: len {} bytes exceeds the slot's {} bytes: set len to at \
                         most samples.nbytes; nothing was committed",
                        f.len, f.capacity
                    )));
                }
            }
            if FrameFlags(f.flags).contains(FrameFlags::XRUN) {
                xruns += 1;
            }
        }
        let wake = p
            .commit_token(token, k)
            .map_err(|e| Failure::new("VR_E_INVALID", e.to_string()))?;
        wake.wake(waiter);
        st.xruns += xruns;
        st.frames += k as u64;
        Ok(())
    }

    fn state(&self, py: Python<'_>) -> std::sync::MutexGuard<'_, State> {
        lock(py, &self.state)
    }

    /// One wait for space of at most a slice, without the GIL: true when there may be room.
    fn wait_space(&self, py: Python<'_>, deadline: Deadline) -> PyResult<bool> {
        loop {
            let slice = deadline.slice();
            let r = py.detach(|| {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.token.is_some() {
                    return Err(Failure::new(
                        "VR_E_GRANT_OPEN",
                        "a write grant is open: commit it first (grant.commit(), or leave its \
                         `with` block)",
                    ));
                }
                let p = st
                    .producer
                    .as_mut()
                    .ok_or_else(|| error::closed("Writer"))?;
                p.wait_for_space(Some(slice)).map_err(error::grant)
            })?;
            match r {
                SpaceWait::Ready => return Ok(true),
                SpaceWait::TimedOut if deadline.passed() => return Ok(false),
                SpaceWait::TimedOut => py.check_signals()?,
            }
        }
    }
}

#[pymethods]
impl Writer {
    /// Creates ring `name` (`/dev/shm/voxring.<name>`, removed on close), or with
    /// `attach=True` attaches to an existing one; either way claims its producer side.
    #[new]
    #[pyo3(signature = (name, frames=16, samples_per_frame=512, channels=1, format="s16",
                        sample_rate=48000, max_consumers=4, policy="lossless", attach=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        frames: u32,
        samples_per_frame: u32,
        channels: u16,
        format: &str,
        sample_rate: u32,
        max_consumers: u16,
        policy: &str,
        attach: bool,
    ) -> PyResult<PyClassInitializer<Self>> {
        let segment = if attach {
            py.detach(|| Segment::attach(&name, &AttachOptions::default()))
                .map_err(|e| error::attach(e).context(&format!("attach to ring {name:?}")))?
        } else {
            let cfg = RingConfig {
                frames,
                samples_per_frame,
                channels,
                format: parse_format(format)?,
                sample_rate,
                max_consumers,
                policy: parse_policy(policy)?,
            };
            cfg.region_size().map_err(|e| {
                PyValueError::new_err(format!("ring {name:?}: invalid configuration: {e}"))
            })?;
            py.detach(|| Segment::create(&name, &cfg, &CreateOptions::default()))
                .map_err(|e| error::create(e).context(&format!("create ring {name:?}")))?
        };
        let producer = segment
            .producer()
            .map_err(|e| error::participant(e).context(&format!("produce into ring {name:?}")))?;
        let memory = Py::new(py, Memory::new(Keep::Segment(segment.clone())))?;
        let config = segment.config();
        let endpoint = Endpoint::new(name, config, memory.get().address());
        Ok(PyClassInitializer::from(endpoint).add_subclass(Writer {
            format: config.format,
            state: Mutex::new(State {
                token: None,
                producer: Some(producer),
                server: None,
                segment: Some(segment),
                memory: Some(memory),
                slots: (0..config.frames).map(|_| None).collect(),
                xruns: 0,
                frames: 0,
            }),
        }))
    }

    /// Serves this ring over a Unix socket to readers that cannot map it: at `socket_path`,
    /// or voxring.<name>.sock in the default directory (see Reader). The socket has mode
    /// `mode` from the moment it can be reached; anything at the path but this user's own
    /// stale socket is refused.
    #[pyo3(signature = (socket_path=None, mode=0o600))]
    fn serve_fallback(
        slf: &Bound<'_, Self>,
        socket_path: Option<PathBuf>,
        mode: u32,
    ) -> PyResult<()> {
        let name = slf.as_super().get().name();
        let mut st = slf.get().state(slf.py());
        let Some(segment) = st.segment.as_ref() else {
            return Err(Self::closed_err());
        };
        let path = match socket_path {
            Some(p) => p,
            None => default_socket_path(name)
                .map_err(|e| Failure::new(error::fallback(&e), e.to_string()))?,
        };
        let server = FallbackServer::serve(segment, &path, mode & 0o777)
            .map_err(|e| Failure::new(error::io(&e), FallbackServer::serve_failure(&path, &e)))?;
        st.server = Some(server);
        Ok(())
    }

    /// Lossless ring: blocks (GIL released) until a frame may be free or `timeout` seconds
    /// pass. "ready" or "timeout". Lossy: "ready" at once.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<&'static str> {
        Ok(if self.wait_space(py, Deadline::after(timeout)?)? {
            "ready"
        } else {
            "timeout"
        })
    }

    /// Grants up to n frames to fill in place. A lossless ring that is full is waited on up
    /// to `timeout` seconds (None: no limit); the grant is empty if it is still full.
    #[pyo3(signature = (n=1, timeout=0.0))]
    fn grant(slf: &Bound<'_, Self>, n: usize, timeout: Option<f64>) -> PyResult<Py<WriteGrant>> {
        let py = slf.py();
        let this = slf.get();
        Deadline::check(timeout)?;
        // The clock is read only when the ring is full.
        let mut deadline = None;
        let live = Arc::new(AtomicBool::new(true));
        loop {
            let mut guard = this.state(py);
            let st = &mut *guard;
            let mem = st.memory.as_ref().ok_or_else(Self::closed_err)?.bind(py);
            if st.token.is_some() {
                return Err(Failure::new(
                    "VR_E_GRANT_OPEN",
                    "a write grant is open: commit it first (grant.commit(), or leave its \
                     `with` block)",
                )
                .into());
            }
            let p = st
                .producer
                .as_mut()
                .ok_or_else(Self::closed_err)?
                .producer();
            let token = match p.grant_token(n) {
                Ok(t) => t,
                Err(voxring_core::GrantError::Full) => {
                    drop(guard);
                    let d = match deadline {
                        Some(d) => d,
                        None => *deadline.insert(Deadline::after(timeout)?),
                    };
                    if timeout == Some(0.0) || !this.wait_space(py, d)? {
                        let frames = Frames::new(PyList::empty(py).unbind());
                        return Py::new(
                            py,
                            PyClassInitializer::from(frames).add_subclass(WriteGrant {
                                writer: slf.clone().unbind(),
                                live: Arc::new(AtomicBool::new(false)),
                            }),
                        );
                    }
                    continue;
                }
                Err(e) => return Err(error::grant(e).into()),
            };
            let mut frames = Vec::with_capacity(token.len());
            for i in 0..token.len() {
                let Some(mut f) = p.token_frame_mut(token, i) else {
                    break;
                };
                let seq = f.seq();
                let payload = f.payload_mut();
                let at = (payload.as_mut_ptr(), payload.len());
                frames.push(slot_frame(&mut st.slots, seq, mem, at, this.format)?);
            }
            let list = PyList::new(py, frames.iter().map(|f| f.clone_ref(py)))?.unbind();
            st.token = Some((token, frames, live.clone()));
            drop(guard);
            return Py::new(
                py,
                PyClassInitializer::from(Frames::new(list)).add_subclass(WriteGrant {
                    writer: slf.clone().unbind(),
                    live,
                }),
            );
        }
    }

    /// Counters: write_pos, frames, xruns, consumers.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state(py);
        let Some(segment) = st.segment.as_ref().filter(|_| st.producer.is_some()) else {
            return Err(Self::closed_err());
        };
        let ring = segment.ring();
        let consumers = (0..ring.config().max_consumers)
            .filter(|&i| ring.consumer_owner(i).is_some())
            .count();
        let d = PyDict::new(py);
        d.set_item("write_pos", ring.write_pos())?;
        d.set_item("frames", st.frames)?;
        d.set_item("xruns", st.xruns)?;
        d.set_item("consumers", consumers)?;
        Ok(d)
    }

    /// Gives up the producer side (an open grant is abandoned: nothing of it is committed)
    /// and stops the fallback server. The segment is unmapped, and removed if this writer
    /// created it, at once, or, if the caller still holds arrays of it, when the last of them
    /// is gone (so an array never points into unmapped memory). Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        let mut st = self.state(py);
        let open = st.token.take();
        let producer = st.producer.take();
        let server = st.server.take();
        let segment = st.segment.take();
        let memory = st.memory.take();
        let slots = std::mem::take(&mut st.slots);
        drop(st);
        if let Some((_, frames, flag)) = open {
            flag.store(false, Ordering::Release);
            retire(py, &frames);
        }
        drop(producer);
        py.detach(|| drop(server));
        drop((segment, memory, slots));
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.state(py).producer.is_none()
    }

    /// The shared mapping every view's `base` is (None once closed).
    #[getter]
    fn memory(&self, py: Python<'_>) -> Option<Py<Memory>> {
        self.state(py).memory.as_ref().map(|m| m.clone_ref(py))
    }
}

/// Ends the frames of a grant: their arrays become read-only and the frames let go of them
/// (only arrays the caller kept still hold the mapping, and the segment's name).
fn retire(py: Python<'_>, frames: &[Py<WriteFrame>]) {
    for f in frames {
        if let Some(a) = f.borrow_mut(py).samples.take() {
            set_writable(a.bind(py), false);
        }
    }
}

/// Frames granted to a Writer. `commit(k)` publishes the first k (all by default); leaving
/// the `with` block commits all, unless an exception is leaving it (then none). After either,
/// the frames' arrays are read-only. An empty grant (ring full) has nothing to commit.
#[pyclass(frozen, extends = Frames, module = "voxring._voxring")]
pub struct WriteGrant {
    writer: Py<Writer>,
    live: Arc<AtomicBool>,
}

#[pymethods]
impl WriteGrant {
    /// Commits the first k frames (all by default) and abandons the rest; wakes the readers.
    /// Committing twice does nothing.
    #[pyo3(signature = (k=None))]
    fn commit(&self, py: Python<'_>, k: Option<usize>) -> PyResult<()> {
        if !self.live.load(Ordering::Acquire) {
            return Ok(());
        }
        self.writer.get().finish(py, &self.live, k)
    }

    /// False once committed (or abandoned).
    #[getter]
    fn open(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    #[pyo3(signature = (exc_type=None, *_rest))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _rest: &Bound<'_, PyTuple>,
    ) -> PyResult<bool> {
        let k = if exc_type.is_some_and(|t| !t.is_none()) {
            Some(0)
        } else {
            None
        };
        self.commit(py, k)?;
        Ok(false)
    }
}

/// A frame to fill: `samples` is a writable view of the slot (read-only after the commit);
/// set `sample_pos`, `timestamp_ns`, `flags` and (if shorter) `len` (bytes) before it.
#[pyclass(module = "voxring._voxring")]
pub struct WriteFrame {
    #[pyo3(get)]
    seq: u64,
    #[pyo3(get, set)]
    sample_pos: u64,
    #[pyo3(get, set)]
    timestamp_ns: u64,
    #[pyo3(get, set)]
    flags: u32,
    /// Payload bytes to commit (default: the whole slot).
    #[pyo3(get, set)]
    len: u32,
    /// The slot's size in bytes.
    #[pyo3(get)]
    capacity: u32,
    samples: Option<Py<PyUntypedArray>>,
}

#[pymethods]
impl WriteFrame {
    /// The slot's payload, in place (writable until the commit).
    #[getter]
    fn samples(&self, py: Python<'_>) -> PyResult<Py<PyUntypedArray>> {
        match &self.samples {
            Some(a) => Ok(a.clone_ref(py)),
            None => Err(Failure::new(
                "VR_E_RELEASED",
                format!(
                    "frame {} was committed (or abandoned): its slot belongs to the readers \
                     now; fill `samples` before the commit",
                    self.seq
                ),
            )
            .into()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "WriteFrame(seq={}, sample_pos={}, timestamp_ns={}, flags={}, len={})",
            self.seq, self.sample_pos, self.timestamp_ns, self.flags, self.len
        )
    }
}
