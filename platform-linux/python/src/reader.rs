//! [`Reader`]: the consumer side, over the shared segment or the producer's socket fallback;
//! its grants ([`ReadGrant`]) and frames ([`Frame`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use voxring_core::{FrameFlags, FrameMeta, ReadToken, ReleaseError, RingConfig};
use voxring_linux::fallback::{FallbackRead, FallbackReader, default_socket_path};
use voxring_linux::ring::{FramesWait, Segment, ShmConsumer, WaitError};
use voxring_linux::segment::AttachOptions;

use crate::config::PyRingConfig;
use crate::error::{self, Failure, Res};
use crate::grant::{Frame, ReadGrant};
use crate::memory::{Keep, Memory, lock, view};
use crate::wait::{Deadline, WaitResult};

// One per reader, made once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Transport {
    Shm {
        /// The open read grant, checked by core on release (a stale one is an error).
        token: Option<ReadToken>,
        consumer: ShmConsumer,
    },
    Socket(Arc<Mutex<FallbackReader>>),
}

/// How long a wait spins with the GIL held before it releases it (and spins, then parks,
/// without it): a frame that comes this soon is handed over without a thread switch.
const GIL_SPIN: Duration = Duration::from_micros(20);

/// A grant handed to Python and not yet released: its frames' flags (for the xrun count) and
/// the flag its frames check.
struct Open {
    live: Arc<AtomicBool>,
    flags: Vec<u32>,
}

struct State {
    /// `None` once closed.
    transport: Option<Transport>,
    open: Option<Open>,
    /// The grant the iterator handed out last (released by the next step).
    iter_grant: Option<Arc<AtomicBool>>,
    /// The views' base: dropped on close, so the mapping (or the fallback socket and buffer)
    /// goes once no view of it is left.
    memory: Option<Py<Memory>>,
    /// A read-only view of each slot's whole payload, made the first time the slot is read
    /// and reused (slots never move): a frame's `samples` costs no new numpy array. Keyed by
    /// `seq % frames`, checked against the payload's address.
    views: Vec<Option<(usize, Py<PyAny>)>>,
    lost_seen: u64,
    xruns: u64,
    frames: u64,
}

/// Reads ring `name`. See the package docs (`help(voxring.Reader)`).
#[pyclass(frozen, subclass, module = "voxring._voxring")]
pub struct Reader {
    name: String,
    state: Mutex<State>,
    address: usize,
    config: RingConfig,
    /// Bytes of a slot's payload (a frame's capacity).
    payload_bytes: usize,
    transport: &'static str,
    reason: String,
}

fn open_shm(name: &str, owner: Option<u32>) -> Res<(Transport, Segment)> {
    let opts = AttachOptions {
        expected_owner: owner,
        ..AttachOptions::default()
    };
    let seg = Segment::attach(name, &opts).map_err(error::attach)?;
    let consumer = seg.consumer().map_err(error::participant)?;
    Ok((
        Transport::Shm {
            token: None,
            consumer,
        },
        seg,
    ))
}

fn connect(
    path: Option<&PathBuf>,
    name: &str,
    why: &str,
    owner: Option<u32>,
) -> Res<FallbackReader> {
    let failed =
        |name, e: String| Failure::new(name, format!("{why}; the socket fallback failed too: {e}"));
    let path = match path {
        Some(p) => p.clone(),
        None => {
            default_socket_path(name).map_err(|e| failed(error::fallback(&e), e.to_string()))?
        }
    };
    FallbackReader::connect_expecting(&path, Duration::from_secs(5), owner)
        .map_err(|e| failed(error::fallback(&e), e.to_string()))
}

impl Reader {
    fn state(&self, py: Python<'_>) -> std::sync::MutexGuard<'_, State> {
        lock(py, &self.state)
    }

    /// One wait of at most `slice`, without the GIL.
    fn wait_slice(&self, py: Python<'_>, slice: Duration) -> Res<FramesWait> {
        py.detach(|| {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.transport.as_mut() {
                None => Err(error::closed("Reader")),
                Some(Transport::Shm { consumer, .. }) => {
                    consumer.wait_for_frames(Some(slice)).map_err(|e| match e {
                        WaitError::Read(e) => error::read(e),
                        e => Failure::new("VR_E_TRUNCATED", e.to_string()),
                    })
                }
                Some(Transport::Socket(f)) => {
                    let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                    f.wait(Some(slice))
                        .map_err(|e| Failure::new("VR_E_IO", e.to_string()))
                }
            }
        })
    }

    /// Spins for at most `spin` with the GIL held, watching the ring for a frame: true when
    /// one may be ready. A frame that comes during the spin is taken without giving up and
    /// re-taking the GIL (a thread switch in CPython); the GIL is held no longer than `spin`,
    /// far below CPython's own switch interval (5 ms). Shared memory only; false if another
    /// thread holds the reader.
    fn spin_holding_the_gil(&self, spin: Duration) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        let Some(Transport::Shm { consumer, .. }) = st.transport.as_mut() else {
            return false;
        };
        // The clock is read only once the first look found nothing.
        let mut until = None;
        let mut i: u32 = 0;
        loop {
            if consumer.is_truncated() {
                return false; // the full wait reports it
            }
            let written = consumer.segment().ring().write_pos();
            if written != consumer.consumer().read_pos() {
                return true;
            }
            let until = *until.get_or_insert_with(|| Instant::now() + spin);
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) && Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    fn wait_until(&self, py: Python<'_>, deadline: Deadline) -> PyResult<WaitResult> {
        if !deadline.passed() && self.spin_holding_the_gil(GIL_SPIN) {
            return Ok(WaitResult::Ready);
        }
        loop {
            let slice = deadline.slice();
            match self.wait_slice(py, slice)? {
                FramesWait::Ready => return Ok(WaitResult::Ready),
                FramesWait::EndOfStream => return Ok(WaitResult::End),
                FramesWait::TimedOut if deadline.passed() => return Ok(WaitResult::Timeout),
                // Between slices: Ctrl-C (and other signals) reach Python.
                FramesWait::TimedOut => py.check_signals()?,
            }
        }
    }

    /// Grants up to `n` frames: the grant object, or a `lost` count (lossy ring, lapped).
    fn grant(slf: &Bound<'_, Self>, n: usize) -> PyResult<Py<ReadGrant>> {
        let py = slf.py();
        let (frames, lost, live) = slf.get().grant_frames(py, n)?;
        let list = PyList::empty(py);
        for f in frames {
            list.append(Py::new(py, f)?)?;
        }
        Py::new(
            py,
            ReadGrant {
                reader: slf.clone().unbind(),
                frames: list.unbind(),
                lost,
                live,
            },
        )
    }

    /// Grants up to `n` frames: their Frame values (not yet Python objects), the frames a
    /// lossy ring lost before them, and the flag that says the grant is open.
    fn grant_frames(
        &self,
        py: Python<'_>,
        n: usize,
    ) -> PyResult<(Vec<Frame>, u64, Arc<AtomicBool>)> {
        let this = self;
        let mut st = this.state(py);
        if st.open.is_some() {
            return Err(Failure::new(
                "VR_E_GRANT_OPEN",
                "a read grant is open: release it first (grant.release(), or leave its `with` \
                 block)",
            )
            .into());
        }
        let fmt = this.config.format;
        let Some(mem) = st.memory.as_ref().map(|m| m.clone_ref(py)) else {
            return Err(error::closed("Reader").into());
        };
        let live = Arc::new(AtomicBool::new(true));
        let mut metas: Vec<(FrameMeta, *const u8)> = Vec::new();
        let mut lost = 0;
        match st.transport.as_mut() {
            None => return Err(error::closed("Reader").into()),
            Some(Transport::Shm { token, consumer }) => {
                let c = consumer.consumer();
                match c.read_token(n) {
                    Ok(t) => {
                        for i in 0..t.len() {
                            if let Some(f) = c.token_frame(t, i) {
                                metas.push((f.meta(), f.payload().as_ptr()));
                            }
                        }
                        *token = Some(t);
                    }
                    Err(voxring_core::ReadError::Empty) => {}
                    Err(voxring_core::ReadError::Lost { .. }) => {
                        let total = c.lost_frames();
                        lost = total - st.lost_seen;
                        st.lost_seen = total;
                    }
                    Err(e) => return Err(error::read(e).into()),
                }
            }
            Some(Transport::Socket(f)) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                match f
                    .read_grant(n)
                    .map_err(|e| Failure::new("VR_E_IO", e.to_string()))?
                {
                    FallbackRead::Frames(k) => {
                        for i in 0..k {
                            if let Some(fr) = f.frame(i) {
                                metas.push((fr.meta, fr.payload.as_ptr()));
                            }
                        }
                    }
                    FallbackRead::Empty | FallbackRead::EndOfStream => {}
                    FallbackRead::Lost(k) => lost = k,
                }
            }
        }
        let cap = this.payload_bytes;
        let mut frames = Vec::with_capacity(metas.len());
        for (m, ptr) in &metas {
            let slot = (m.seq % u64::from(this.config.frames)) as usize;
            let cached = st
                .views
                .get(slot)
                .and_then(|v| v.as_ref())
                .filter(|(p, _)| *p == *ptr as usize);
            let full = match cached {
                Some((_, a)) => a.clone_ref(py),
                None => {
                    let a = view(mem.bind(py), ptr.cast_mut(), cap, fmt, false)?.unbind();
                    if let Some(v) = st.views.get_mut(slot) {
                        *v = Some((*ptr as usize, a.clone_ref(py)));
                    }
                    a
                }
            };
            frames.push(Frame {
                meta: *m,
                full,
                whole: m.len as usize == cap,
                live: live.clone(),
                samples: OnceLock::new(),
            });
        }
        if !frames.is_empty() {
            st.open = Some(Open {
                live: live.clone(),
                flags: metas.iter().map(|(m, _)| m.flags.0).collect(),
            });
        }
        drop(st);
        Ok((frames, lost, live))
    }

    /// Releases the frame the iterator handed out last, if any.
    fn release_iterated(&self, py: Python<'_>) -> PyResult<()> {
        let prev = self.state(py).iter_grant.take();
        match prev {
            Some(live) if live.load(Ordering::Acquire) => self.release(py, &live, None).map(drop),
            _ => Ok(()),
        }
    }

    /// Releases the iterator's last frame and grants the next one, if one is ready.
    fn next_frame(slf: &Bound<'_, Self>) -> PyResult<Option<Py<Frame>>> {
        let py = slf.py();
        let this = slf.get();
        this.release_iterated(py)?;
        // No ReadGrant or list: the frame alone (its grant is the reader's `iter_grant`).
        let (frames, _lost, live) = this.grant_frames(py, 1)?;
        let Some(f) = frames.into_iter().next() else {
            return Ok(None);
        };
        this.state(py).iter_grant = Some(live);
        Ok(Some(Py::new(py, f)?))
    }

    /// Releases the first `k` frames of the open grant whose flag is `live`. False: a lossy
    /// ring overwrote some while they were read.
    pub(crate) fn release(
        &self,
        py: Python<'_>,
        live: &AtomicBool,
        k: Option<usize>,
    ) -> PyResult<bool> {
        let mut st = self.state(py);
        let st = &mut *st;
        let Some(open) = st
            .open
            .as_ref()
            .filter(|o| std::ptr::eq(Arc::as_ptr(&o.live), live))
        else {
            return Ok(true); // released already (or the reader was closed)
        };
        let n = open.flags.len();
        let k = k.unwrap_or(n);
        if k > n {
            return Err(PyValueError::new_err(format!(
                "release of {k} frames, {n} granted: pass at most {n}"
            )));
        }
        let xruns = open.flags[..k]
            .iter()
            .filter(|f| FrameFlags(**f).contains(FrameFlags::XRUN))
            .count() as u64;
        // Whatever the outcome, this grant is over: its frames' views are refused from now.
        open.live.store(false, Ordering::Release);
        st.open = None;
        let mut intact = true;
        match st.transport.as_mut() {
            None => return Ok(true),
            Some(Transport::Shm { token, consumer }) => {
                let Some(t) = token.take() else {
                    return Ok(true);
                };
                let (c, waiter) = consumer.parts();
                match c.release_token(t, k) {
                    Ok(wake) => wake.wake(waiter),
                    Err(ReleaseError::Overwritten { .. }) => intact = false,
                    Err(e @ ReleaseError::Evicted) => {
                        return Err(Failure::new("VR_E_EVICTED", e.to_string()).into());
                    }
                    Err(e) => return Err(Failure::new("VR_E_INVALID", e.to_string()).into()),
                }
            }
            Some(Transport::Socket(f)) => {
                f.lock().unwrap_or_else(|p| p.into_inner()).release(k);
            }
        }
        st.xruns += xruns;
        st.frames += k as u64;
        Ok(intact)
    }
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (name, socket_path=None, fallback=true, force_fallback=false, expected_owner=None))]
    fn new(
        py: Python<'_>,
        name: String,
        socket_path: Option<PathBuf>,
        fallback: bool,
        force_fallback: bool,
        expected_owner: Option<i64>,
    ) -> PyResult<Self> {
        let owner = expected_owner
            .map(|o| {
                u32::try_from(o).map_err(|_| {
                    PyValueError::new_err(format!(
                        "expected_owner {o} is not a uid (0 ..= 4294967295): pass the ring \
                         owner's numeric user id"
                    ))
                })
            })
            .transpose()?;
        let opened = py.detach(|| -> Res<_> {
            if force_fallback {
                let why = "force_fallback=True was given";
                let f = connect(socket_path.as_ref(), &name, why, owner)?;
                return Ok((
                    Transport::Socket(Arc::new(Mutex::new(f))),
                    None,
                    why.to_owned(),
                ));
            }
            match open_shm(&name, owner) {
                Ok((t, seg)) => Ok((t, Some(seg), String::new())),
                Err(e)
                    if fallback
                        && matches!(
                            e.name,
                            "VR_E_NOT_FOUND" | "VR_E_PERMISSION" | "VR_E_ATTACH"
                        ) =>
                {
                    let why = format!("attaching the shared segment failed: {}", e.msg);
                    let f = connect(socket_path.as_ref(), &name, &why, owner).map_err(|f| {
                        // The first failure names the kind of error (a missing ring, say).
                        Failure::new(e.name, f.msg)
                    })?;
                    Ok((Transport::Socket(Arc::new(Mutex::new(f))), None, why))
                }
                Err(e) => Err(e),
            }
        });
        let (transport, seg, reason) =
            opened.map_err(|e| PyErr::from(e.context(&format!("open reader {name:?}"))))?;
        let (keep, config, kind, payload_bytes) = match (&transport, seg) {
            (_, Some(seg)) => {
                let (cfg, n) = (seg.config(), seg.ring().payload_bytes() as usize);
                (Keep::Segment(seg), cfg, "shm", n)
            }
            (Transport::Socket(f), None) => {
                let f0 = f.lock().unwrap_or_else(|p| p.into_inner());
                let (cfg, n) = (f0.config(), f0.payload_bytes());
                drop(f0);
                (Keep::Fallback(f.clone()), cfg, "socket-fallback", n)
            }
            (Transport::Shm { .. }, None) => unreachable!("a shared transport has a segment"),
        };
        let memory = Py::new(py, Memory::new(keep))?;
        Ok(Reader {
            name,
            address: memory.get().address(),
            payload_bytes,
            state: Mutex::new(State {
                transport: Some(transport),
                open: None,
                iter_grant: None,
                memory: Some(memory),
                views: (0..config.frames).map(|_| None).collect(),
                lost_seen: 0,
                xruns: 0,
                frames: 0,
            }),
            config,
            transport: kind,
            reason,
        })
    }

    /// Blocks, without holding the GIL, until a frame may be ready or `timeout` seconds pass
    /// (None: no limit; Ctrl-C still interrupts). Returns "ready", "timeout" or "end" (the
    /// producer is gone and everything was read).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<&'static str> {
        // A frame that is already there (or comes within the spin) needs no deadline.
        Deadline::check(timeout)?;
        if timeout != Some(0.0) && self.spin_holding_the_gil(GIL_SPIN) {
            return Ok(WaitResult::Ready.as_str());
        }
        Ok(self.wait_until(py, Deadline::after(timeout)?)?.as_str())
    }

    /// Grants up to `max_frames` ready frames to read in place (an empty grant if none is
    /// ready; `grant.lost` > 0 if a lossy ring lapped this reader).
    #[pyo3(signature = (max_frames=1))]
    fn read(slf: &Bound<'_, Self>, max_frames: usize) -> PyResult<Py<ReadGrant>> {
        slf.get().release_iterated(slf.py())?;
        Reader::grant(slf, max_frames)
    }

    /// Counters: write_pos, read_pos, lag, lost_frames, xruns, frames.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut st = self.state(py);
        let done = st.frames;
        let (write_pos, read_pos, lost) = match st.transport.as_mut() {
            None => return Err(error::closed("Reader").into()),
            Some(Transport::Shm { consumer, .. }) => {
                let write_pos = consumer.segment().ring().write_pos();
                let c = consumer.consumer();
                (write_pos, c.read_pos(), c.lost_frames())
            }
            Some(Transport::Socket(f)) => {
                let f = f.lock().unwrap_or_else(|p| p.into_inner());
                (done + f.buffered(), done, f.lost_frames())
            }
        };
        let d = PyDict::new(py);
        d.set_item("write_pos", write_pos)?;
        d.set_item("read_pos", read_pos)?;
        d.set_item("lag", write_pos.saturating_sub(read_pos))?;
        d.set_item("lost_frames", lost)?;
        d.set_item("xruns", st.xruns)?;
        d.set_item("frames", st.frames)?;
        Ok(d)
    }

    /// Leaves the ring (or closes the fallback socket). Frames still granted are abandoned
    /// (their `samples` raise ReleasedError); arrays taken from them stay readable memory
    /// (the mapping lives until the last one is gone) but the producer may overwrite them.
    /// Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        let mut st = self.state(py);
        if let Some(o) = st.open.take() {
            o.live.store(false, Ordering::Release);
        }
        let transport = st.transport.take();
        let it = st.iter_grant.take();
        let memory = st.memory.take();
        let views = std::mem::take(&mut st.views);
        drop(st);
        drop((it, memory, views));
        // Leaving the ring may wake a parked producer; closing a socket may block briefly.
        py.detach(|| drop(transport));
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.state(py).transport.is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next frame, waiting for it without the GIL; the frame before it is released
    /// first (a frame from `for frame in reader` is valid until the next step, or the next
    /// `read()`). Ends when the producer is gone and everything was read.
    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<Frame>> {
        let py = slf.py();
        loop {
            if let Some(f) = Reader::next_frame(slf)? {
                return Ok(f);
            }
            if slf.get().wait_until(py, Deadline::never())? == WaitResult::End {
                return Err(PyStopIteration::new_err(()));
            }
        }
    }

    /// One step of iteration without waiting: releases the frame the last step handed out,
    /// then grants the next one (None if none is ready). What `async for` is made of.
    fn _next_frame(slf: &Bound<'_, Self>) -> PyResult<Option<Py<Frame>>> {
        Reader::next_frame(slf)
    }

    /// The ring's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// "shm", or "socket-fallback" (`transport_reason` says why).
    #[getter]
    fn transport(&self) -> &'static str {
        self.transport
    }

    /// Why the socket fallback is used (empty over shared memory).
    #[getter]
    fn transport_reason(&self) -> &str {
        &self.reason
    }

    /// The ring's configuration.
    #[getter]
    fn config(&self) -> PyRingConfig {
        PyRingConfig(self.config)
    }

    /// The memory frames live in (the shared mapping over shared memory): what every view's
    /// `base` is.
    #[getter]
    fn memory(&self, py: Python<'_>) -> Option<Py<Memory>> {
        self.state(py).memory.as_ref().map(|m| m.clone_ref(py))
    }

    /// Address of the memory frames live in.
    #[getter]
    fn memory_address(&self) -> usize {
        self.address
    }
}
