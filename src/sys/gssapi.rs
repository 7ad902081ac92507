//! GSSAPI (RFC 2743/2744) through the system's MIT krb5 library, `libgssapi_krb5.so.2`, loaded at
//! run time with `libloading`: the build needs no headers, no bindgen and no pkg-config, and a host
//! without the library runs everything but Kerberos (the error says what to install).
//!
//! The few calls keyhole needs are declared by hand from MIT's `gssapi.h`/`gssapi_ext.h` (Linux
//! x86-64/aarch64 layout: no packing, `OM_uint32` = `u32`, `size_t` lengths). The safe API:
//! [`AcceptorCred::acquire`] (the configured keytab through `gss_acquire_cred_from` with the
//! `keytab` cred-store key, for the Kerberos and SPNEGO mechanisms), [`Context::acceptor`] /
//! [`Context::initiator`] stepped with tokens until [`Step::Complete`] (which carries the peer's
//! principal), and [`Context::wrap_winrm`] / [`Context::unwrap_winrm`] (`gss_wrap_iov` /
//! `gss_unwrap_iov` with the header/data/padding layout MS-WSMV message encryption uses).
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::path::Path;
use std::ptr;
use std::sync::OnceLock;

/// The library's file name (the SONAME MIT krb5 ships on every current distribution).
pub const LIBRARY_NAME: &str = "libgssapi_krb5.so.2";

/// Largest token or message buffer handed to the library (bytes).
pub const MAX_BUFFER: usize = 64 * 1024 * 1024;

type OmUint32 = u32;
type GssName = *mut c_void;
type GssCred = *mut c_void;
type GssCtx = *mut c_void;

#[repr(C)]
struct OidDesc {
    length: OmUint32,
    elements: *mut c_void,
}

#[repr(C)]
struct OidSetDesc {
    count: usize,
    elements: *mut OidDesc,
}

#[repr(C)]
struct BufferDesc {
    length: usize,
    value: *mut c_void,
}

impl BufferDesc {
    fn empty() -> Self {
        BufferDesc {
            length: 0,
            value: ptr::null_mut(),
        }
    }
    /// A descriptor pointing at `bytes` (the library only reads input buffers).
    fn borrowed(bytes: &[u8]) -> Self {
        BufferDesc {
            length: bytes.len(),
            value: bytes.as_ptr() as *mut c_void,
        }
    }
}

#[repr(C)]
struct ChannelBindings {
    initiator_addrtype: OmUint32,
    initiator_address: BufferDesc,
    acceptor_addrtype: OmUint32,
    acceptor_address: BufferDesc,
    application_data: BufferDesc,
}

#[repr(C)]
struct KeyValueElement {
    key: *const std::ffi::c_char,
    value: *const std::ffi::c_char,
}

#[repr(C)]
struct KeyValueSet {
    count: OmUint32,
    elements: *mut KeyValueElement,
}

#[repr(C)]
struct IovBuffer {
    kind: OmUint32,
    buffer: BufferDesc,
}

const GSS_S_COMPLETE: OmUint32 = 0;
const GSS_S_CONTINUE_NEEDED: OmUint32 = 1;
/// GSS_S_DUPLICATE_TOKEN | GSS_S_OLD_TOKEN | GSS_S_UNSEQ_TOKEN | GSS_S_GAP_TOKEN.
const SUPPLEMENTARY_MASK: OmUint32 = 0x2 | 0x4 | 0x8 | 0x10;
const GSS_C_GSS_CODE: c_int = 1;
const GSS_C_MECH_CODE: c_int = 2;
const GSS_C_INDEFINITE: OmUint32 = 0xffff_ffff;
const GSS_C_INITIATE: c_int = 1;
const GSS_C_ACCEPT: c_int = 2;
const GSS_C_AF_UNSPEC: OmUint32 = 0;
const GSS_IOV_BUFFER_TYPE_DATA: OmUint32 = 1;
const GSS_IOV_BUFFER_TYPE_HEADER: OmUint32 = 2;
const GSS_IOV_BUFFER_TYPE_PADDING: OmUint32 = 9;

/// `GSS_C_MUTUAL_FLAG`.
pub const FLAG_MUTUAL: u32 = 2;
/// `GSS_C_REPLAY_FLAG`.
pub const FLAG_REPLAY: u32 = 4;
/// `GSS_C_SEQUENCE_FLAG`.
pub const FLAG_SEQUENCE: u32 = 8;
/// `GSS_C_CONF_FLAG`: confidentiality (message encryption) is available.
pub const FLAG_CONF: u32 = 16;
/// `GSS_C_INTEG_FLAG`.
pub const FLAG_INTEG: u32 = 32;
/// `GSS_C_CHANNEL_BOUND_FLAG` (MIT krb5 ≥ 1.19): the initiator's channel bindings matched ours.
pub const FLAG_CHANNEL_BOUND: u32 = 2048;

/// DER contents of the Kerberos 5 mechanism OID 1.2.840.113554.1.2.2.
pub const OID_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// DER contents of the SPNEGO mechanism OID 1.3.6.1.5.5.2.
pub const OID_SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// GSS_C_NT_HOSTBASED_SERVICE 1.2.840.113554.1.2.1.4 (`service@host`).
const OID_NT_HOSTBASED_SERVICE: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x04];

type AcquireCredFromFn = unsafe extern "C" fn(
    *mut OmUint32,
    GssName,
    OmUint32,
    *mut OidSetDesc,
    c_int,
    *const KeyValueSet,
    *mut GssCred,
    *mut *mut OidSetDesc,
    *mut OmUint32,
) -> OmUint32;
type AcceptSecContextFn = unsafe extern "C" fn(
    *mut OmUint32,
    *mut GssCtx,
    GssCred,
    *mut BufferDesc,
    *mut ChannelBindings,
    *mut GssName,
    *mut *mut OidDesc,
    *mut BufferDesc,
    *mut OmUint32,
    *mut OmUint32,
    *mut GssCred,
) -> OmUint32;
type InitSecContextFn = unsafe extern "C" fn(
    *mut OmUint32,
    GssCred,
    *mut GssCtx,
    GssName,
    *mut OidDesc,
    OmUint32,
    OmUint32,
    *mut ChannelBindings,
    *mut BufferDesc,
    *mut *mut OidDesc,
    *mut BufferDesc,
    *mut OmUint32,
    *mut OmUint32,
) -> OmUint32;
type ImportNameFn =
    unsafe extern "C" fn(*mut OmUint32, *mut BufferDesc, *mut OidDesc, *mut GssName) -> OmUint32;
type DisplayNameFn =
    unsafe extern "C" fn(*mut OmUint32, GssName, *mut BufferDesc, *mut *mut OidDesc) -> OmUint32;
type ReleaseNameFn = unsafe extern "C" fn(*mut OmUint32, *mut GssName) -> OmUint32;
type ReleaseBufferFn = unsafe extern "C" fn(*mut OmUint32, *mut BufferDesc) -> OmUint32;
type ReleaseCredFn = unsafe extern "C" fn(*mut OmUint32, *mut GssCred) -> OmUint32;
type DeleteSecContextFn =
    unsafe extern "C" fn(*mut OmUint32, *mut GssCtx, *mut BufferDesc) -> OmUint32;
type WrapIovFn = unsafe extern "C" fn(
    *mut OmUint32,
    GssCtx,
    c_int,
    OmUint32,
    *mut c_int,
    *mut IovBuffer,
    c_int,
) -> OmUint32;
type UnwrapIovFn = unsafe extern "C" fn(
    *mut OmUint32,
    GssCtx,
    *mut c_int,
    *mut OmUint32,
    *mut IovBuffer,
    c_int,
) -> OmUint32;
type DisplayStatusFn = unsafe extern "C" fn(
    *mut OmUint32,
    OmUint32,
    c_int,
    *mut OidDesc,
    *mut OmUint32,
    *mut BufferDesc,
) -> OmUint32;

/// The loaded library and the entry points keyhole uses.
struct Library {
    acquire_cred_from: AcquireCredFromFn,
    accept_sec_context: AcceptSecContextFn,
    init_sec_context: InitSecContextFn,
    import_name: ImportNameFn,
    display_name: DisplayNameFn,
    release_name: ReleaseNameFn,
    release_buffer: ReleaseBufferFn,
    release_cred: ReleaseCredFn,
    delete_sec_context: DeleteSecContextFn,
    wrap_iov: WrapIovFn,
    wrap_iov_length: WrapIovFn,
    unwrap_iov: UnwrapIovFn,
    display_status: DisplayStatusFn,
    /// Keeps the code the pointers above point into mapped for the life of the process.
    _lib: libloading::Library,
}

/// Why a GSSAPI call failed. The text is for the server log, never for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GssError {
    /// The library could not be loaded.
    #[error("Kerberos is unavailable: cannot load {LIBRARY_NAME} ({0}); install it (Debian/Ubuntu: `apt-get install libgssapi-krb5-2`, RHEL/Fedora: `dnf install krb5-libs`) or turn `[auth] negotiate` off")]
    Unavailable(String),
    /// A call returned an error status; `message` is the library's own text.
    #[error("{call} failed: {message}")]
    Call { call: &'static str, message: String },
    /// Input refused before reaching the library (too large, embedded NUL, wrong state).
    #[error("{0}")]
    Input(String),
}

static LIBRARY: OnceLock<Result<Library, String>> = OnceLock::new();

/// Loads the library once per process; later calls return the same result.
fn library() -> Result<&'static Library, GssError> {
    LIBRARY
        .get_or_init(load)
        .as_ref()
        .map_err(|e| GssError::Unavailable(e.clone()))
}

/// Whether the library can be loaded on this host.
pub fn available() -> Result<(), GssError> {
    library().map(|_| ())
}

fn load() -> Result<Library, String> {
    // SAFETY: loading MIT's GSSAPI library runs its ELF initialisers, which only set up
    // internal state (error tables, mutexes); it has no initialiser with preconditions.
    let lib = unsafe { libloading::Library::new(LIBRARY_NAME) }.map_err(|e| e.to_string())?;
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            // SAFETY: the symbol is looked up by its exported C name and typed with the
            // signature declared in MIT's gssapi.h (the `type ...Fn` aliases above mirror it
            // argument for argument); the pointer is only used while `_lib` keeps it mapped.
            let s: libloading::Symbol<'_, $ty> =
                unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{}: {e}", $name))?;
            *s
        }};
    }
    Ok(Library {
        acquire_cred_from: sym!("gss_acquire_cred_from", AcquireCredFromFn),
        accept_sec_context: sym!("gss_accept_sec_context", AcceptSecContextFn),
        init_sec_context: sym!("gss_init_sec_context", InitSecContextFn),
        import_name: sym!("gss_import_name", ImportNameFn),
        display_name: sym!("gss_display_name", DisplayNameFn),
        release_name: sym!("gss_release_name", ReleaseNameFn),
        release_buffer: sym!("gss_release_buffer", ReleaseBufferFn),
        release_cred: sym!("gss_release_cred", ReleaseCredFn),
        delete_sec_context: sym!("gss_delete_sec_context", DeleteSecContextFn),
        wrap_iov: sym!("gss_wrap_iov", WrapIovFn),
        wrap_iov_length: sym!("gss_wrap_iov_length", WrapIovFn),
        unwrap_iov: sym!("gss_unwrap_iov", UnwrapIovFn),
        display_status: sym!("gss_display_status", DisplayStatusFn),
        _lib: lib,
    })
}

fn is_error(major: OmUint32) -> bool {
    major & 0xffff_0000 != 0
}

impl Library {
    /// Copies a library-owned buffer into a `Vec` and releases it.
    fn take_buffer(&self, buf: &mut BufferDesc) -> Vec<u8> {
        let out = if buf.value.is_null() || buf.length == 0 {
            Vec::new()
        } else {
            // SAFETY: the library filled `buf` with `length` readable bytes at `value`
            // (a gss_buffer_desc it allocated); we copy them before releasing it.
            unsafe { std::slice::from_raw_parts(buf.value as *const u8, buf.length) }.to_vec()
        };
        let mut minor = 0;
        // SAFETY: `buf` was filled by the library (or is empty); gss_release_buffer frees it
        // and resets it to empty, so it is never freed twice.
        unsafe { (self.release_buffer)(&mut minor, buf) };
        out
    }

    /// The library's text for a major and minor status, both lists joined.
    fn status_text(&self, major: OmUint32, minor: OmUint32) -> String {
        let mut parts = Vec::new();
        for (code, kind) in [(major, GSS_C_GSS_CODE), (minor, GSS_C_MECH_CODE)] {
            if kind == GSS_C_MECH_CODE && code == 0 {
                continue;
            }
            let mut context: OmUint32 = 0;
            for _ in 0..8 {
                let mut m = 0;
                let mut buf = BufferDesc::empty();
                // SAFETY: all pointers are to live locals; mech NULL means the default mech;
                // the returned buffer is released by take_buffer.
                let st = unsafe {
                    (self.display_status)(
                        &mut m,
                        code,
                        kind,
                        ptr::null_mut(),
                        &mut context,
                        &mut buf,
                    )
                };
                if is_error(st) {
                    break;
                }
                let text = self.take_buffer(&mut buf);
                parts.push(String::from_utf8_lossy(&text).into_owned());
                if context == 0 {
                    break;
                }
            }
        }
        if parts.is_empty() {
            format!("major status {major:#x}, minor status {minor}")
        } else {
            parts.join(": ")
        }
    }

    fn check(&self, call: &'static str, major: OmUint32, minor: OmUint32) -> Result<(), GssError> {
        if is_error(major) {
            Err(GssError::Call {
                call,
                message: self.status_text(major, minor),
            })
        } else {
            Ok(())
        }
    }

    /// The printable form of a name (`alice@EXAMPLE.COM`).
    fn name_text(&self, name: GssName) -> Result<String, GssError> {
        let mut minor = 0;
        let mut buf = BufferDesc::empty();
        // SAFETY: `name` is a live name handle returned by the library; the buffer is
        // released by take_buffer; the name-type out pointer may be NULL.
        let major = unsafe { (self.display_name)(&mut minor, name, &mut buf, ptr::null_mut()) };
        self.check("gss_display_name", major, minor)?;
        let bytes = self.take_buffer(&mut buf);
        String::from_utf8(bytes).map_err(|_| GssError::Input("the peer's name is not UTF-8".into()))
    }

    fn release_name_handle(&self, name: &mut GssName) {
        if !name.is_null() {
            let mut minor = 0;
            // SAFETY: `name` is a live handle from the library; gss_release_name frees it and
            // sets it to GSS_C_NO_NAME.
            unsafe { (self.release_name)(&mut minor, name) };
        }
    }
}

/// Acceptor credentials: the keys of one keytab, for Kerberos and SPNEGO.
pub struct AcceptorCred {
    lib: &'static Library,
    cred: GssCred,
}

// SAFETY: a credential handle is an immutable, library-owned object after acquisition; MIT
// krb5 guards the mutable parts of `krb5_gss_cred_id_rec` with its own mutex, so the handle may
// be used from several threads and released from any thread.
unsafe impl Send for AcceptorCred {}
// SAFETY: see `Send`: concurrent gss_accept_sec_context calls on one credential are supported
// by MIT krb5 (the credential carries its own lock).
unsafe impl Sync for AcceptorCred {}

impl fmt::Debug for AcceptorCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptorCred")
    }
}

impl AcceptorCred {
    /// Acquires acceptor credentials for any principal in `keytab` (the name the client asked
    /// for must be one of the keytab's principals).
    pub fn acquire(keytab: &Path) -> Result<Self, GssError> {
        let lib = library()?;
        let keytab = keytab
            .to_str()
            .ok_or_else(|| GssError::Input(format!("keytab path {keytab:?} is not UTF-8")))?;
        let key = c"keytab";
        let value = CString::new(format!("FILE:{keytab}"))
            .map_err(|_| GssError::Input("keytab path contains a NUL byte".into()))?;
        let mut element = KeyValueElement {
            key: key.as_ptr(),
            value: value.as_ptr(),
        };
        let store = KeyValueSet {
            count: 1,
            elements: &mut element,
        };
        let mut krb5 = OID_KRB5.to_vec();
        let mut spnego = OID_SPNEGO.to_vec();
        let mut oids = [oid_desc(&mut krb5), oid_desc(&mut spnego)];
        let mut set = OidSetDesc {
            count: oids.len(),
            elements: oids.as_mut_ptr(),
        };
        let mut minor = 0;
        let mut cred: GssCred = ptr::null_mut();
        // SAFETY: every pointer is to a live local (`store` → `element` → two NUL-terminated
        // C strings, `set` → `oids` → owned OID bytes) that outlives the call; the library only
        // reads the inputs and writes the new handle to `cred`; actual_mechs and time_rec are
        // NULL (not wanted).
        let major = unsafe {
            (lib.acquire_cred_from)(
                &mut minor,
                ptr::null_mut(),
                GSS_C_INDEFINITE,
                &mut set,
                GSS_C_ACCEPT,
                &store,
                &mut cred,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        lib.check("gss_acquire_cred_from", major, minor)?;
        Ok(AcceptorCred { lib, cred })
    }
}

impl Drop for AcceptorCred {
    fn drop(&mut self) {
        let mut minor = 0;
        // SAFETY: `cred` is the live handle acquired in `acquire`, released exactly once here.
        unsafe { (self.lib.release_cred)(&mut minor, &mut self.cred) };
    }
}

/// Initiator credentials from a credential cache (used by tests and by keyhole as a client).
pub struct InitiatorCred {
    lib: &'static Library,
    cred: GssCred,
}

// SAFETY: as for AcceptorCred: an acquired credential is library-owned and internally locked.
unsafe impl Send for InitiatorCred {}

impl InitiatorCred {
    /// The default principal of the credential cache `ccache` (e.g. `FILE:/tmp/cc`).
    pub fn from_ccache(ccache: &str) -> Result<Self, GssError> {
        let lib = library()?;
        let value = CString::new(ccache)
            .map_err(|_| GssError::Input("ccache name contains a NUL byte".into()))?;
        let mut element = KeyValueElement {
            key: c"ccache".as_ptr(),
            value: value.as_ptr(),
        };
        let store = KeyValueSet {
            count: 1,
            elements: &mut element,
        };
        let mut krb5 = OID_KRB5.to_vec();
        let mut spnego = OID_SPNEGO.to_vec();
        let mut oids = [oid_desc(&mut krb5), oid_desc(&mut spnego)];
        let mut set = OidSetDesc {
            count: oids.len(),
            elements: oids.as_mut_ptr(),
        };
        let mut minor = 0;
        let mut cred: GssCred = ptr::null_mut();
        // SAFETY: as in AcceptorCred::acquire: live locals, read-only inputs, one out handle.
        let major = unsafe {
            (lib.acquire_cred_from)(
                &mut minor,
                ptr::null_mut(),
                GSS_C_INDEFINITE,
                &mut set,
                GSS_C_INITIATE,
                &store,
                &mut cred,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        lib.check("gss_acquire_cred_from", major, minor)?;
        Ok(InitiatorCred { lib, cred })
    }
}

impl Drop for InitiatorCred {
    fn drop(&mut self) {
        let mut minor = 0;
        // SAFETY: the live handle from `from_ccache`, released exactly once.
        unsafe { (self.lib.release_cred)(&mut minor, &mut self.cred) };
    }
}

fn oid_desc(bytes: &mut [u8]) -> OidDesc {
    OidDesc {
        length: bytes.len() as OmUint32,
        elements: bytes.as_mut_ptr() as *mut c_void,
    }
}

/// Which mechanism an initiator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    /// Raw Kerberos 5 tokens (HTTP `Kerberos` scheme, or `Negotiate` from pykerberos-style clients).
    Kerberos,
    /// SPNEGO-wrapped tokens (HTTP `Negotiate`).
    Spnego,
}

/// What one step of a context establishment produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `0` to the peer and wait for its next token.
    Continue(Vec<u8>),
    /// The context is established. `out` (possibly empty: nothing to send) is the last token for
    /// the peer (the acceptor's AP-REP for mutual authentication).
    Complete {
        /// The peer's principal (`alice@EXAMPLE.COM`); for an initiator, the service's.
        principal: String,
        out: Vec<u8>,
        /// `GSS_C_*_FLAG` bits the context offers ([`FLAG_CONF`], [`FLAG_CHANNEL_BOUND`], …).
        flags: u32,
    },
}

/// One security context, acceptor or initiator. Not `Sync`: the HTTP layer keeps it with the
/// connection and uses it from one task at a time.
pub struct Context {
    lib: &'static Library,
    ctx: GssCtx,
    /// The service name an initiator targets (owned handle), NULL for acceptors.
    target: GssName,
    mech: Option<Mech>,
    complete: bool,
}

// SAFETY: a security context may be used from any thread as long as calls on it are not
// concurrent; `Context` is not `Sync` and every method takes `&mut self`.
unsafe impl Send for Context {}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("complete", &self.complete)
            .finish()
    }
}

impl Context {
    /// A fresh acceptor context (the mechanism is chosen by the first token).
    pub fn acceptor() -> Result<Self, GssError> {
        Ok(Context {
            lib: library()?,
            ctx: ptr::null_mut(),
            target: ptr::null_mut(),
            mech: None,
            complete: false,
        })
    }

    /// A fresh initiator context towards `service@host` (e.g. `HTTP@web.example.com`).
    pub fn initiator(service_at_host: &str, mech: Mech) -> Result<Self, GssError> {
        let lib = library()?;
        let mut text = service_at_host.as_bytes().to_vec();
        let mut buf = BufferDesc {
            length: text.len(),
            value: text.as_mut_ptr() as *mut c_void,
        };
        let mut nt = OID_NT_HOSTBASED_SERVICE.to_vec();
        let mut nt_oid = oid_desc(&mut nt);
        let mut name: GssName = ptr::null_mut();
        let mut minor = 0;
        // SAFETY: `buf` and `nt_oid` point at live owned bytes; the library copies the name
        // and writes one new handle to `name`, released in Drop.
        let major = unsafe { (lib.import_name)(&mut minor, &mut buf, &mut nt_oid, &mut name) };
        lib.check("gss_import_name", major, minor)?;
        Ok(Context {
            lib,
            ctx: ptr::null_mut(),
            target: name,
            mech: Some(mech),
            complete: false,
        })
    }

    /// Whether the context is established.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// One acceptor step: `token` from the client, `bindings` the TLS channel binding
    /// application data (`tls-server-end-point:` + certificate hash) or `None`.
    pub fn accept(
        &mut self,
        cred: &AcceptorCred,
        token: &[u8],
        bindings: Option<&[u8]>,
    ) -> Result<Step, GssError> {
        if self.complete || !self.target.is_null() {
            return Err(GssError::Input(
                "accept on a context that is complete or an initiator".into(),
            ));
        }
        if token.is_empty() || token.len() > MAX_BUFFER {
            return Err(GssError::Input(format!(
                "token of {} bytes refused",
                token.len()
            )));
        }
        let mut input = BufferDesc::borrowed(token);
        let mut cb = bindings.map(channel_bindings);
        let cb_ptr = cb
            .as_mut()
            .map_or(ptr::null_mut(), |c| c as *mut ChannelBindings);
        let mut src: GssName = ptr::null_mut();
        let mut out = BufferDesc::empty();
        let mut flags: OmUint32 = 0;
        let mut minor = 0;
        let lib = self.lib;
        // SAFETY: `self.ctx` is NULL or the live handle of an earlier step; `cred` is a live
        // acceptor credential; `input` borrows `token` (only read); `cb` borrows `bindings`
        // (only read); `src`, `out` and `flags` receive library-owned results that are
        // released below; mech type, time_rec and delegated creds are not wanted (NULL).
        let major = unsafe {
            (lib.accept_sec_context)(
                &mut minor,
                &mut self.ctx,
                cred.cred,
                &mut input,
                cb_ptr,
                &mut src,
                ptr::null_mut(),
                &mut out,
                &mut flags,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        let out_bytes = lib.take_buffer(&mut out);
        if let Err(e) = lib.check("gss_accept_sec_context", major, minor) {
            lib.release_name_handle(&mut src);
            return Err(e);
        }
        if major & GSS_S_CONTINUE_NEEDED != 0 {
            lib.release_name_handle(&mut src);
            return Ok(Step::Continue(out_bytes));
        }
        debug_assert_eq!(major & 0xffff, GSS_S_COMPLETE);
        let principal = if src.is_null() {
            Err(GssError::Input(
                "the library returned no peer name".to_string(),
            ))
        } else {
            lib.name_text(src)
        };
        lib.release_name_handle(&mut src);
        self.complete = true;
        Ok(Step::Complete {
            principal: principal?,
            out: out_bytes,
            flags,
        })
    }

    /// One initiator step: `token` is `None` for the first call, then the acceptor's reply.
    pub fn initiate(
        &mut self,
        cred: &InitiatorCred,
        token: Option<&[u8]>,
        flags: u32,
        bindings: Option<&[u8]>,
    ) -> Result<Step, GssError> {
        let mech = match self.mech {
            Some(m) if !self.complete => m,
            _ => {
                return Err(GssError::Input(
                    "initiate on a context that is complete or an acceptor".into(),
                ))
            }
        };
        let mut oid_bytes = match mech {
            Mech::Kerberos => OID_KRB5.to_vec(),
            Mech::Spnego => OID_SPNEGO.to_vec(),
        };
        let mut oid = oid_desc(&mut oid_bytes);
        let mut input = token.map(BufferDesc::borrowed);
        let input_ptr = input
            .as_mut()
            .map_or(ptr::null_mut(), |b| b as *mut BufferDesc);
        let mut cb = bindings.map(channel_bindings);
        let cb_ptr = cb
            .as_mut()
            .map_or(ptr::null_mut(), |c| c as *mut ChannelBindings);
        let mut out = BufferDesc::empty();
        let mut ret_flags: OmUint32 = 0;
        let mut minor = 0;
        let lib = self.lib;
        // SAFETY: `self.ctx` is NULL or the live handle of an earlier step; `cred` and
        // `self.target` are live handles; `oid`, `input` and `cb` point at live locals that are
        // only read; `out` and `ret_flags` receive results (the buffer released below).
        let major = unsafe {
            (lib.init_sec_context)(
                &mut minor,
                cred.cred,
                &mut self.ctx,
                self.target,
                &mut oid,
                flags,
                0,
                cb_ptr,
                input_ptr,
                ptr::null_mut(),
                &mut out,
                &mut ret_flags,
                ptr::null_mut(),
            )
        };
        let out_bytes = lib.take_buffer(&mut out);
        lib.check("gss_init_sec_context", major, minor)?;
        if major & GSS_S_CONTINUE_NEEDED != 0 {
            return Ok(Step::Continue(out_bytes));
        }
        self.complete = true;
        let principal = lib.name_text(self.target)?;
        Ok(Step::Complete {
            principal,
            out: out_bytes,
            flags: ret_flags,
        })
    }

    fn established(&self) -> Result<(), GssError> {
        if self.complete && !self.ctx.is_null() {
            Ok(())
        } else {
            Err(GssError::Input(
                "the security context is not established".into(),
            ))
        }
    }

    /// Encrypts `data` for WS-Man message encryption: `gss_wrap_iov` with confidentiality over
    /// HEADER | DATA | PADDING; returns (header, encrypted data followed by the padding).
    pub fn wrap_winrm(&mut self, data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), GssError> {
        self.established()?;
        if data.len() > MAX_BUFFER {
            return Err(GssError::Input(format!(
                "message of {} bytes refused",
                data.len()
            )));
        }
        let lib = self.lib;
        let mut body = data.to_vec();
        let mut iov = [
            IovBuffer {
                kind: GSS_IOV_BUFFER_TYPE_HEADER,
                buffer: BufferDesc::empty(),
            },
            IovBuffer {
                kind: GSS_IOV_BUFFER_TYPE_DATA,
                buffer: BufferDesc {
                    length: body.len(),
                    value: body.as_mut_ptr() as *mut c_void,
                },
            },
            IovBuffer {
                kind: GSS_IOV_BUFFER_TYPE_PADDING,
                buffer: BufferDesc::empty(),
            },
        ];
        let mut minor = 0;
        let mut conf: c_int = 0;
        // SAFETY: `self.ctx` is an established context; `iov` is an array of 3 live
        // descriptors; gss_wrap_iov_length only writes the lengths of HEADER and PADDING.
        let major = unsafe {
            (lib.wrap_iov_length)(&mut minor, self.ctx, 1, 0, &mut conf, iov.as_mut_ptr(), 3)
        };
        lib.check("gss_wrap_iov_length", major, minor)?;
        let [h, _, p] = &iov;
        if h.buffer.length > 64 * 1024 || p.buffer.length > 64 * 1024 {
            return Err(GssError::Input("implausible wrap header size".into()));
        }
        let mut header = vec![0u8; h.buffer.length];
        let mut padding = vec![0u8; p.buffer.length];
        let [h, d, p] = &mut iov;
        h.buffer.value = header.as_mut_ptr() as *mut c_void;
        p.buffer.value = padding.as_mut_ptr() as *mut c_void;
        d.buffer.value = body.as_mut_ptr() as *mut c_void;
        let mut conf: c_int = 0;
        // SAFETY: each descriptor now points at a Rust buffer of exactly the length the
        // library asked for; gss_wrap_iov encrypts DATA in place and fills HEADER/PADDING
        // without writing beyond their lengths.
        let major =
            unsafe { (lib.wrap_iov)(&mut minor, self.ctx, 1, 0, &mut conf, iov.as_mut_ptr(), 3) };
        lib.check("gss_wrap_iov", major, minor)?;
        if conf == 0 {
            return Err(GssError::Input(
                "the context cannot encrypt (no confidentiality)".into(),
            ));
        }
        let [h, _, p] = &iov;
        header.truncate(h.buffer.length);
        padding.truncate(p.buffer.length);
        body.extend_from_slice(&padding);
        Ok((header, body))
    }

    /// Decrypts one WS-Man encrypted part: `gss_unwrap_iov` over HEADER | DATA. Refuses data
    /// that was not encrypted (integrity only).
    pub fn unwrap_winrm(&mut self, header: &[u8], data: &[u8]) -> Result<Vec<u8>, GssError> {
        self.established()?;
        if data.len() > MAX_BUFFER || header.len() > 64 * 1024 {
            return Err(GssError::Input("encrypted message too large".into()));
        }
        let lib = self.lib;
        let mut head = header.to_vec();
        let mut body = data.to_vec();
        let mut iov = [
            IovBuffer {
                kind: GSS_IOV_BUFFER_TYPE_HEADER,
                buffer: BufferDesc {
                    length: head.len(),
                    value: head.as_mut_ptr() as *mut c_void,
                },
            },
            IovBuffer {
                kind: GSS_IOV_BUFFER_TYPE_DATA,
                buffer: BufferDesc {
                    length: body.len(),
                    value: body.as_mut_ptr() as *mut c_void,
                },
            },
        ];
        let mut minor = 0;
        let mut conf: c_int = 0;
        let mut qop: OmUint32 = 0;
        // SAFETY: both descriptors point at owned Rust buffers of the stated lengths;
        // gss_unwrap_iov decrypts DATA in place and may shrink the lengths, never grow them.
        let major = unsafe {
            (lib.unwrap_iov)(
                &mut minor,
                self.ctx,
                &mut conf,
                &mut qop,
                iov.as_mut_ptr(),
                2,
            )
        };
        lib.check("gss_unwrap_iov", major, minor)?;
        // Supplementary bits (duplicate, old, out-of-sequence, gap) are not fatal in GSSAPI,
        // but WS-Man messages on one connection are strictly ordered: any of them is a replay
        // or a reordering, and is refused.
        if major & SUPPLEMENTARY_MASK != 0 {
            return Err(GssError::Call {
                call: "gss_unwrap_iov",
                message: format!(
                    "replayed or out-of-sequence message (supplementary status {:#x})",
                    major & SUPPLEMENTARY_MASK
                ),
            });
        }
        if conf == 0 {
            return Err(GssError::Input(
                "the message was signed but not encrypted".into(),
            ));
        }
        let [_, d] = &iov;
        let len = d.buffer.length.min(body.len());
        body.truncate(len);
        Ok(body)
    }
}

fn channel_bindings(application_data: &[u8]) -> ChannelBindings {
    ChannelBindings {
        initiator_addrtype: GSS_C_AF_UNSPEC,
        initiator_address: BufferDesc::empty(),
        acceptor_addrtype: GSS_C_AF_UNSPEC,
        acceptor_address: BufferDesc::empty(),
        application_data: BufferDesc::borrowed(application_data),
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let mut minor = 0;
        if !self.ctx.is_null() {
            // SAFETY: `ctx` is a live context handle; deleted exactly once; no output token.
            unsafe { (self.lib.delete_sec_context)(&mut minor, &mut self.ctx, ptr::null_mut()) };
        }
        let lib = self.lib;
        lib.release_name_handle(&mut self.target);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_system_library_or_says_what_to_install() {
        match available() {
            Ok(()) => {
                // Acquiring from a keytab that does not exist fails with the library's text.
                let err = AcceptorCred::acquire(Path::new("/nonexistent/keyhole.keytab"))
                    .expect_err("no keytab");
                assert!(
                    matches!(
                        err,
                        GssError::Call {
                            call: "gss_acquire_cred_from",
                            ..
                        }
                    ),
                    "{err}"
                );
            }
            Err(e) => assert!(e.to_string().contains("apt-get install libgssapi-krb5-2")),
        }
    }

    #[test]
    fn an_unestablished_context_does_not_wrap() {
        if available().is_err() {
            return;
        }
        let mut ctx = Context::acceptor().unwrap();
        assert!(ctx.wrap_winrm(b"x").is_err());
        assert!(ctx.unwrap_winrm(b"h", b"x").is_err());
    }

    #[test]
    fn garbage_tokens_are_errors_not_crashes() {
        if available().is_err() {
            return;
        }
        // An acceptor without a keytab still rejects malformed tokens before needing keys.
        let dir = std::env::temp_dir().join(format!("keyhole-gss-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let kt = dir.join("empty.keytab");
        std::fs::write(&kt, [5u8, 2]).unwrap();
        if let Ok(cred) = AcceptorCred::acquire(&kt) {
            for token in [
                &b"\x60\x03\x06\x01\x00"[..],
                b"NTLMSSP\0garbage",
                &[0xa1, 0x00],
            ] {
                let mut ctx = Context::acceptor().unwrap();
                assert!(ctx.accept(&cred, token, None).is_err());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
