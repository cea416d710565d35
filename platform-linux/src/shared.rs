//! voxring-core's shared objects ([`InRegion`]: a [`CycleFence`], a [`ControlRegister`]...)
//! placed in a named segment, behind safe references.
//!
//! A [`Plan`] lists the objects a segment holds and computes where each goes (core's
//! [`place_after`]: every object on its own alignment and cache line). [`SharedObjects`]
//! creates the segment from a plan (every object initialised before the segment gets its
//! name) or attaches to one (the file must be exactly the plan's size, and every object is
//! validated: magic, version, size), and owns the mapping and this process's presence lock.
//! [`Placed<T>`] is a reference to one object that keeps the segment mapped as long as it
//! lives. No caller computes an offset, touches a raw pointer or writes `unsafe`.
//!
//! [`CycleFence`]: voxring_core::fence::CycleFence
//! [`ControlRegister`]: voxring_core::control::ControlRegister
//!
//! ```
//! use voxring_core::control::ControlRegister;
//! use voxring_core::fence::CycleFence;
//! use voxring_linux::segment::{AttachOptions, CreateOptions};
//! use voxring_linux::shared::{PlaceError, Plan, SharedObjects, Slot};
//!
//! type Reg = ControlRegister<u64, 4>;
//!
//! // The same plan on both sides: a fence, then a register of four words.
//! fn plan() -> Result<(Plan, Slot<CycleFence>, Slot<Reg>), PlaceError> {
//!     let mut plan = Plan::new();
//!     let fence = plan.place::<CycleFence>(())?;
//!     let reg = plan.place::<Reg>(7)?;
//!     Ok((plan, fence, reg))
//! }
//!
//! let name = format!("doc-shared-{}", std::process::id());
//! let (p, _, reg) = plan()?;
//! let created = SharedObjects::create(&name, &CreateOptions::default(), p)?;
//! // Another process would do this:
//! let (p, fence, reg_slot) = plan()?;
//! let attached = SharedObjects::attach(&name, &AttachOptions::default(), &p)?;
//! assert_eq!(attached.get(reg_slot)?.read(), Ok(7));
//! created.get(reg)?.write(8).unwrap();
//! assert_eq!(attached.placed(reg_slot)?.read(), Ok(8));
//! assert_eq!(attached.get(fence)?.armed_cycle(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use voxring_core::region::{InRegion, RegionError, place_after};

use crate::mapping::SharedMapping;
use crate::segment::{AttachError, AttachOptions, CreateError, CreateOptions, SegmentFile};

/// The mapping is page-aligned: no object can ask for more.
const PAGE: usize = 4096;

/// An [`InRegion`] object this module can place: its handle is a plain reference, and it
/// may be shared between threads (every voxring-core shared object is made of atomics).
///
/// Implemented for every such type; [`CycleFence`](voxring_core::fence::CycleFence) and
/// [`ControlRegister`](voxring_core::control::ControlRegister) are.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// fn placeable<T: voxring_linux::shared::Resident>() {}
/// placeable::<CycleFence>();
/// ```
pub trait Resident: for<'a> InRegion<Handle<'a> = &'a Self> + Sync + 'static {}

impl<T> Resident for T where T: for<'a> InRegion<Handle<'a> = &'a T> + Sync + 'static {}

/// Where one object of type `T` sits in a [`Plan`]'s segment: a token to give to
/// [`SharedObjects::get`] or [`SharedObjects::placed`], which validate the object there.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// let mut plan = voxring_linux::shared::Plan::new();
/// let slot = plan.place::<CycleFence>(())?;
/// assert_eq!(slot.offset(), 0);
/// # Ok::<(), voxring_linux::shared::PlaceError>(())
/// ```
pub struct Slot<T> {
    offset: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Slot<T> {
    /// The object's offset in the segment, in bytes.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot<{}> at {}", std::any::type_name::<T>(), self.offset)
    }
}

type InitFn = Box<dyn FnOnce(&SharedMapping) -> Result<(), RegionError> + Send>;

/// One planned object.
struct Entry {
    /// Its type's name, for errors.
    what: &'static str,
    offset: usize,
    /// Validates the object at `offset` (`InRegion::attach`).
    check: fn(&SharedMapping, usize) -> Result<(), RegionError>,
    /// Initialises it there (`InRegion::init_in` with the initial value); used by `create`.
    init: InitFn,
}

/// The objects a segment holds, each at the offset the plan computed. Build the same plan on
/// the creating and the attaching side.
///
/// ```
/// use voxring_core::control::ControlRegister;
/// use voxring_core::fence::CycleFence;
/// use voxring_linux::shared::Plan;
///
/// let mut plan = Plan::new();
/// let fence = plan.place::<CycleFence>(())?;
/// let reg = plan.place::<ControlRegister<u32, 1>>(0)?;
/// assert_eq!(fence.offset(), 0);
/// assert!(reg.offset() >= CycleFence::REGION_SIZE);
/// assert_eq!(plan.size(), reg.offset() + ControlRegister::<u32, 1>::REGION_SIZE);
/// # Ok::<(), voxring_linux::shared::PlaceError>(())
/// ```
#[derive(Default)]
pub struct Plan {
    end: usize,
    entries: Vec<Entry>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for e in &self.entries {
            l.entry(&format_args!("{} at {}", e.what, e.offset));
        }
        l.finish()?;
        write!(f, " ({} bytes)", self.end)
    }
}

impl Plan {
    /// An empty plan.
    ///
    /// ```
    /// assert_eq!(voxring_linux::shared::Plan::new().size(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an object of type `T`, created (by [`SharedObjects::create`]) with `init`, after
    /// the objects already planned; returns where it goes. An attaching side passes any value
    /// of the same shape (only its size counts).
    ///
    /// # Errors
    /// [`PlaceError::Plan`] when `T` needs more than page alignment, `init` is not a valid
    /// configuration, or the segment would not fit in memory.
    ///
    /// ```
    /// use voxring_core::control::ControlRegister;
    /// let mut plan = voxring_linux::shared::Plan::new();
    /// let a = plan.place::<ControlRegister<u64, 1>>(1)?;
    /// let b = plan.place::<ControlRegister<u64, 1>>(2)?;
    /// assert!(b.offset() >= a.offset() + ControlRegister::<u64, 1>::REGION_SIZE);
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn place<T: Resident>(&mut self, init: T::Init) -> Result<Slot<T>, PlaceError>
    where
        T::Init: Send + 'static,
    {
        let what = std::any::type_name::<T>();
        let refuse = |why: String| PlaceError::Plan { what, why };
        if !T::ALIGN.is_power_of_two() || T::ALIGN > PAGE {
            return Err(refuse(format!(
                "it needs {}-byte alignment, and a segment's mapping guarantees {PAGE}",
                T::ALIGN
            )));
        }
        let size = T::size_for(&init).map_err(|e| refuse(e.to_string()))?;
        let offset = place_after(self.end, T::ALIGN)
            .filter(|o| {
                o.checked_add(size)
                    .is_some_and(|end| end <= isize::MAX as usize)
            })
            .ok_or_else(|| refuse("the segment would exceed the address space".to_owned()))?;
        self.end = offset + size;
        self.entries.push(Entry {
            what,
            offset,
            check: check_at::<T>,
            init: Box::new(move |m| init_at::<T>(m, offset, init)),
        });
        Ok(Slot {
            offset,
            _type: PhantomData,
        })
    }

    /// The segment's size in bytes: the end of the last object.
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// let mut plan = voxring_linux::shared::Plan::new();
    /// plan.place::<CycleFence>(())?;
    /// assert_eq!(plan.size(), CycleFence::REGION_SIZE);
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn size(&self) -> usize {
        self.end
    }
}

/// The bytes of `m` from `offset` on, as core's region functions take them.
fn region_at(m: &SharedMapping, offset: usize) -> Result<(*mut u8, usize), RegionError> {
    let len = m.len().checked_sub(offset).ok_or(RegionError::TooSmall {
        need: offset,
        got: m.len(),
    })?;
    // `wrapping_add` keeps this safe; `offset <= m.len()`, so the pointer is in the mapping or
    // one past its end (then `len` is 0 and core's checks refuse it).
    Ok((m.as_ptr().wrapping_add(offset), len))
}

fn check_at<T: Resident>(m: &SharedMapping, offset: usize) -> Result<(), RegionError> {
    let (ptr, len) = region_at(m, offset)?;
    // SAFETY: `ptr` is valid for reads and writes of `len` bytes for as long as `m` is mapped,
    // which outlasts the reference (dropped at the end of this call); this crate accesses
    // segment memory only through core's objects, which are atomic.
    unsafe { <T as InRegion>::attach(ptr, len) }.map(|_| ())
}

fn init_at<T: Resident>(
    m: &SharedMapping,
    offset: usize,
    init: T::Init,
) -> Result<(), RegionError> {
    let (ptr, len) = region_at(m, offset)?;
    // SAFETY: as in `check_at`; called only by `SharedObjects::create` on a fresh mapping
    // nobody else can see yet, once per object, and the plan's objects do not overlap.
    unsafe { <T as InRegion>::init_in(ptr, len, init) }.map(|_| ())
}

/// A named segment holding the objects of a [`Plan`]: owns the mapping and this process's
/// presence lock (so a clean-up never removes it while in use), and removes the file when the
/// creating side drops its last handle (unless [`CreateOptions::remove_on_drop`] is false).
/// Cloning is cheap and shares the mapping; every [`Placed`] holds a clone, so the mapping,
/// the lock and the file go only after the last reference into the segment.
///
/// ```
/// use voxring_core::fence::CycleFence;
/// use voxring_linux::segment::{AttachError, AttachOptions, CreateOptions};
/// use voxring_linux::shared::{PlaceError, Plan, SharedObjects};
///
/// let name = format!("doc-objects-{}", std::process::id());
/// let mut plan = Plan::new();
/// let fence = plan.place::<CycleFence>(())?;
/// let seg = SharedObjects::create(&name, &CreateOptions::default(), plan)?;
/// seg.get(fence)?.arm(1, 0b1, u64::MAX).unwrap();
/// assert!(seg.path().ends_with(format!("voxring.{name}")));
/// drop(seg);
/// // The creator is gone, so is the segment.
/// let mut plan = Plan::new();
/// plan.place::<CycleFence>(())?;
/// let gone = SharedObjects::attach(&name, &AttachOptions::default(), &plan);
/// assert!(matches!(gone, Err(PlaceError::Attach(AttachError::NotFound { .. }))));
/// # Ok::<(), PlaceError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SharedObjects {
    file: Arc<SegmentFile>,
}

impl SharedObjects {
    /// Creates `/dev/shm/voxring.<name>` of [`Plan::size`] bytes and initialises every
    /// planned object in it before the segment gets its name, so an attacher sees all of them
    /// or no segment.
    ///
    /// # Errors
    /// [`PlaceError::Create`] (name taken, no room...), [`PlaceError::Region`] when an object
    /// refused its place, [`PlaceError::Plan`] for an empty plan.
    ///
    /// ```
    /// use voxring_core::control::ControlRegister;
    /// use voxring_linux::segment::CreateOptions;
    /// use voxring_linux::shared::{Plan, SharedObjects};
    ///
    /// let mut plan = Plan::new();
    /// let reg = plan.place::<ControlRegister<u64, 1>>(42)?;
    /// let name = format!("doc-create-{}", std::process::id());
    /// let seg = SharedObjects::create(&name, &CreateOptions::default(), plan)?;
    /// assert_eq!(seg.get(reg)?.read(), Ok(42));
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn create(name: &str, opts: &CreateOptions, plan: Plan) -> Result<Self, PlaceError> {
        let size = nonempty_size(&plan)?;
        let mut refused = None;
        let created = SegmentFile::create_with(name, size, opts, |_, m| {
            for e in plan.entries {
                if let Err(error) = (e.init)(m) {
                    refused = Some((e.what, e.offset, error));
                    return Err(CreateError::Io {
                        op: "place a shared object in",
                        path: PathBuf::from(name),
                        errno: rustix::io::Errno::INVAL,
                    });
                }
            }
            Ok::<(), CreateError>(())
        });
        match (created, refused) {
            (Ok(file), _) => Ok(Self {
                file: Arc::new(file),
            }),
            (Err(_), Some((what, offset, error))) => Err(PlaceError::Region {
                path: crate::segment::path_of(name).unwrap_or_else(|_| PathBuf::from(name)),
                what,
                offset,
                error,
            }),
            (Err(e), None) => Err(PlaceError::Create(e)),
        }
    }

    /// Attaches to `/dev/shm/voxring.<name>`, which must be exactly [`Plan::size`] bytes (a
    /// grown or shrunk file is refused before anything is mapped), and validates every planned
    /// object in it (magic, version, size); takes this process's presence lock.
    ///
    /// # Errors
    /// [`PlaceError::Attach`] (missing, symlink, wrong owner or mode, wrong size...),
    /// [`PlaceError::Region`] for the first object that is not valid.
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// use voxring_linux::segment::{AttachOptions, CreateOptions};
    /// use voxring_linux::shared::{Plan, SharedObjects};
    ///
    /// let plan = || {
    ///     let mut p = Plan::new();
    ///     let f = p.place::<CycleFence>(());
    ///     f.map(|f| (p, f))
    /// };
    /// let name = format!("doc-attach-{}", std::process::id());
    /// let (p, _) = plan()?;
    /// let _owner = SharedObjects::create(&name, &CreateOptions::default(), p)?;
    /// let (p, fence) = plan()?;
    /// let seg = SharedObjects::attach(&name, &AttachOptions::default(), &p)?;
    /// assert_eq!(seg.get(fence)?.required(), 0);
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn attach(name: &str, opts: &AttachOptions, plan: &Plan) -> Result<Self, PlaceError> {
        let size = nonempty_size(plan)?;
        let file = SegmentFile::attach(name, size as u64, opts).map_err(PlaceError::Attach)?;
        for e in &plan.entries {
            (e.check)(file.mapping(), e.offset).map_err(|error| PlaceError::Region {
                path: file.path().to_path_buf(),
                what: e.what,
                offset: e.offset,
                error,
            })?;
        }
        Ok(Self {
            file: Arc::new(file),
        })
    }

    /// The object at `slot`, validated again (so a slot of another plan is caught, not
    /// trusted), borrowed from this handle.
    ///
    /// # Errors
    /// [`PlaceError::Region`] when no valid `T` is there.
    ///
    /// ```
    /// use voxring_core::control::ControlRegister;
    /// use voxring_core::fence::CycleFence;
    /// use voxring_linux::shared::{PlaceError, Plan, SharedObjects, Slot};
    ///
    /// let mut plan = Plan::new();
    /// let fence = plan.place::<CycleFence>(())?;
    /// let name = format!("doc-get-{}", std::process::id());
    /// let seg = SharedObjects::create(&name, &Default::default(), plan)?;
    /// assert_eq!(seg.get(fence)?.armed_cycle(), 0);
    /// // A register's slot from another plan, at the fence's offset: refused, not trusted.
    /// let mut other = Plan::new();
    /// let wrong: Slot<ControlRegister<u64, 1>> = other.place(0)?;
    /// assert!(matches!(seg.get(wrong), Err(PlaceError::Region { .. })));
    /// # Ok::<(), PlaceError>(())
    /// ```
    pub fn get<T: Resident>(&self, slot: Slot<T>) -> Result<&T, PlaceError> {
        let region_error = |error| PlaceError::Region {
            path: self.file.path().to_path_buf(),
            what: std::any::type_name::<T>(),
            offset: slot.offset,
            error,
        };
        let (ptr, len) = region_at(self.file.mapping(), slot.offset).map_err(region_error)?;
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes while `self.file` is
        // mapped, which outlasts the returned borrow of `self`; segment memory is accessed only
        // through core's objects, which are atomic. `attach` validates the region and object.
        unsafe { <T as InRegion>::attach(ptr, len) }.map_err(region_error)
    }

    /// The object at `slot` as a [`Placed<T>`] that keeps this segment mapped (no borrow), for
    /// storing in a struct or sending to another thread.
    ///
    /// # Errors
    /// As [`SharedObjects::get`].
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// use voxring_linux::shared::{Placed, Plan, SharedObjects};
    ///
    /// let mut plan = Plan::new();
    /// let slot = plan.place::<CycleFence>(())?;
    /// let name = format!("doc-placed-{}", std::process::id());
    /// let fence: Placed<CycleFence> =
    ///     SharedObjects::create(&name, &Default::default(), plan)?.placed(slot)?;
    /// // The segment handle is gone, the fence keeps it mapped.
    /// std::thread::spawn(move || fence.arm(1, 1, u64::MAX).unwrap()).join().unwrap();
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn placed<T: Resident>(&self, slot: Slot<T>) -> Result<Placed<T>, PlaceError> {
        let obj = NonNull::from(self.get(slot)?);
        Ok(Placed {
            obj,
            segment: self.clone(),
        })
    }

    /// The segment file's path.
    ///
    /// ```
    /// # use voxring_linux::shared::{Plan, SharedObjects};
    /// # let mut plan = Plan::new();
    /// # plan.place::<voxring_core::fence::CycleFence>(())?;
    /// let name = format!("doc-path-{}", std::process::id());
    /// let seg = SharedObjects::create(&name, &Default::default(), plan)?;
    /// assert!(seg.path().exists());
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The segment file (its descriptor, its mapping, [`SegmentFile::check_size`]).
    ///
    /// ```
    /// # use voxring_linux::shared::{Plan, SharedObjects};
    /// # let mut plan = Plan::new();
    /// # plan.place::<voxring_core::fence::CycleFence>(())?;
    /// let name = format!("doc-file-{}", std::process::id());
    /// let seg = SharedObjects::create(&name, &Default::default(), plan)?;
    /// assert_eq!(seg.file().check_size(), Ok(()));
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn file(&self) -> &SegmentFile {
        &self.file
    }
}

fn nonempty_size(plan: &Plan) -> Result<usize, PlaceError> {
    if plan.entries.is_empty() {
        return Err(PlaceError::Plan {
            what: "segment",
            why: "the plan places no object: call Plan::place first".to_owned(),
        });
    }
    Ok(plan.size())
}

/// One object in a segment, validated, that keeps the segment mapped (and this process
/// present in it) for as long as it lives; dereferences to the object.
///
/// ```
/// use voxring_core::control::ControlRegister;
/// use voxring_linux::segment::{AttachOptions, CreateOptions};
/// use voxring_linux::shared::Placed;
///
/// type Reg = ControlRegister<[u64; 8], 8>;
/// let name = format!("doc-one-{}", std::process::id());
/// let mine = Placed::<Reg>::create(&name, &CreateOptions::default(), [0; 8])?;
/// let theirs = Placed::<Reg>::attach(&name, &AttachOptions::default())?;
/// mine.write([1; 8]).unwrap();
/// assert_eq!(theirs.read(), Ok([1; 8]));
/// # Ok::<(), voxring_linux::shared::PlaceError>(())
/// ```
pub struct Placed<T: Resident> {
    /// Validated by `SharedObjects::get`; points into `segment`'s mapping.
    obj: NonNull<T>,
    segment: SharedObjects,
}

// SAFETY: a `Placed<T>` is a `&T` plus an `Arc` of the segment file (Send and Sync); `&T` is
// Send and Sync when `T: Sync`, which `Resident` requires.
unsafe impl<T: Resident> Send for Placed<T> {}
// SAFETY: as above.
unsafe impl<T: Resident> Sync for Placed<T> {}

impl<T: Resident> Placed<T> {
    /// Creates a segment holding one `T` created with `init` (see [`SharedObjects::create`]).
    ///
    /// # Errors
    /// As [`SharedObjects::create`].
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// let name = format!("doc-one-create-{}", std::process::id());
    /// let f = voxring_linux::shared::Placed::<CycleFence>::create(&name, &Default::default(), ())?;
    /// assert_eq!(f.armed_cycle(), 0);
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn create(name: &str, opts: &CreateOptions, init: T::Init) -> Result<Self, PlaceError>
    where
        T::Init: Send + 'static,
    {
        let mut plan = Plan::new();
        let slot = plan.place::<T>(init)?;
        SharedObjects::create(name, opts, plan)?.placed(slot)
    }

    /// Attaches to a segment holding one `T` (see [`SharedObjects::attach`]); the size comes
    /// from `T::Init::default()`.
    ///
    /// # Errors
    /// As [`SharedObjects::attach`].
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// use voxring_linux::shared::{PlaceError, Placed};
    /// let name = format!("doc-one-attach-{}", std::process::id());
    /// let missing = Placed::<CycleFence>::attach(&name, &Default::default());
    /// assert!(matches!(missing, Err(PlaceError::Attach(_))));
    /// let _f = Placed::<CycleFence>::create(&name, &Default::default(), ())?;
    /// assert_eq!(Placed::<CycleFence>::attach(&name, &Default::default())?.required(), 0);
    /// # Ok::<(), PlaceError>(())
    /// ```
    pub fn attach(name: &str, opts: &AttachOptions) -> Result<Self, PlaceError>
    where
        T::Init: Default + Send + 'static,
    {
        let mut plan = Plan::new();
        let slot = plan.place::<T>(T::Init::default())?;
        SharedObjects::attach(name, opts, &plan)?.placed(slot)
    }

    /// The segment the object lives in.
    ///
    /// ```
    /// use voxring_core::fence::CycleFence;
    /// let name = format!("doc-one-seg-{}", std::process::id());
    /// let f = voxring_linux::shared::Placed::<CycleFence>::create(&name, &Default::default(), ())?;
    /// assert!(f.segment().path().exists());
    /// # Ok::<(), voxring_linux::shared::PlaceError>(())
    /// ```
    pub fn segment(&self) -> &SharedObjects {
        &self.segment
    }
}

impl<T: Resident> Deref for Placed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: validated when made (`SharedObjects::get`); it points into the mapping that
        // `self.segment` keeps alive, and `T` is made of atomics, valid for any bit pattern a
        // peer writes.
        unsafe { self.obj.as_ref() }
    }
}

impl<T: Resident> Clone for Placed<T> {
    fn clone(&self) -> Self {
        Self {
            obj: self.obj,
            segment: self.segment.clone(),
        }
    }
}

impl<T: Resident> fmt::Debug for Placed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Placed<{}> in {}",
            std::any::type_name::<T>(),
            self.segment.path().display()
        )
    }
}

/// Why objects could not be planned, placed or attached to.
///
/// ```
/// use voxring_linux::shared::{PlaceError, Plan, SharedObjects};
/// let empty = SharedObjects::create("doc-empty", &Default::default(), Plan::new());
/// let e = empty.unwrap_err();
/// assert!(matches!(e, PlaceError::Plan { .. }));
/// assert!(e.to_string().contains("Plan::place"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PlaceError {
    /// The plan cannot be laid out.
    Plan {
        /// The object's type.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// Creating the segment failed.
    Create(CreateError),
    /// Attaching to the segment was refused.
    Attach(AttachError),
    /// An object refused its place: when attaching, the segment does not hold a valid one
    /// there (not this kind of segment, another voxring version, or a peer damaged it).
    Region {
        /// The segment's path.
        path: PathBuf,
        /// The object's type.
        what: &'static str,
        /// Its offset in the segment.
        offset: usize,
        /// What core's checks found.
        error: RegionError,
    },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::Plan { what, why } => write!(f, "cannot plan a place for {what}: {why}"),
            PlaceError::Create(e) => e.fmt(f),
            PlaceError::Attach(e) => e.fmt(f),
            PlaceError::Region {
                path,
                what,
                offset,
                error,
            } => write!(
                f,
                "{} holds no valid {what} at offset {offset}: {error} (both sides must build \
                 the same plan with the same voxring version; if they do, a peer damaged the \
                 segment: recreate it)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PlaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlaceError::Create(e) => Some(e),
            PlaceError::Attach(e) => Some(e),
            PlaceError::Region { error, .. } => Some(error),
            PlaceError::Plan { .. } => None,
        }
    }
}

impl From<CreateError> for PlaceError {
    fn from(e: CreateError) -> Self {
        Self::Create(e)
    }
}

impl From<AttachError> for PlaceError {
    fn from(e: AttachError) -> Self {
        Self::Attach(e)
    }
}
