//! Linux-PAM, loaded at run time from `libpam.so.0` (package `libpam0g`, present on every Debian
//! system), so that building keyhole needs no PAM headers and no bindgen/libclang.
//!
//! Only what a password check needs is declared here, by hand, from `<security/pam_appl.h>` and
//! `<security/_pam_types.h>` (Linux-PAM): `pam_start`, `pam_authenticate`, `pam_acct_mgmt`,
//! `pam_end`, `pam_strerror`, the message/response structs and the conversation struct. No PAM
//! session is opened and no credentials are set, so nothing changes the server's environment.
//!
//! The conversation callback ([`converse`]) is the one place where PAM calls into Rust. It never
//! unwinds across the FFI boundary (its body runs under `catch_unwind`; a panic becomes
//! `PAM_CONV_ERR`), accepts at most [`MAX_MESSAGES`] messages, reads at most
//! [`MAX_MESSAGE_BYTES`] of each message text (never past that, even without a NUL), answers only
//! the two prompt styles (echo on: the user name; echo off: the password), and on any failure
//! wipes and frees what it allocated and leaves PAM's response pointer untouched. The texts PAM
//! shows (information and error messages) go to the log at debug level; they carry no secret.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

/// The shared object loaded at run time (Linux-PAM's stable soname).
pub const LIBRARY: &str = "libpam.so.0";
/// Most messages one conversation call may carry (Linux-PAM's `PAM_MAX_NUM_MSG`).
pub const MAX_MESSAGES: usize = 32;
/// Most bytes read from one message text (Linux-PAM's `PAM_MAX_MSG_SIZE`).
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest answer keyhole gives (Linux-PAM's `PAM_MAX_RESP_SIZE`): a longer name or password is
/// refused before PAM is called.
pub const MAX_ANSWER_BYTES: usize = 512;
/// Most bytes read from a `pam_strerror` text.
const MAX_ERROR_TEXT_BYTES: usize = 256;

// <security/_pam_types.h>
const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
const PAM_SILENT: c_int = 0x8000;
const PAM_DISALLOW_NULL_AUTHTOK: c_int = 0x0001;

/// `struct pam_message`.
#[repr(C)]
pub struct PamMessage {
    pub msg_style: c_int,
    pub msg: *const c_char,
}

/// `struct pam_response`.
#[repr(C)]
pub struct PamResponse {
    pub resp: *mut c_char,
    pub resp_retcode: c_int,
}

/// The conversation function's type. Linux-PAM passes `msg` as an array of `num_msg` pointers.
type ConvFn = unsafe extern "C" fn(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

/// `pam_handle_t`, opaque.
#[repr(C)]
struct PamHandle {
    _private: [u8; 0],
}

type StartFn = unsafe extern "C" fn(
    service_name: *const c_char,
    user: *const c_char,
    pam_conversation: *const PamConv,
    pamh: *mut *mut PamHandle,
) -> c_int;
type HandleFlagsFn = unsafe extern "C" fn(pamh: *mut PamHandle, flags: c_int) -> c_int;
type StrerrorFn = unsafe extern "C" fn(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;

/// The loaded library and the five functions keyhole calls. The library stays loaded for the
/// life of the process (it sits in a `static`), so the function pointers never dangle.
struct Pam {
    _library: libloading::Library,
    start: StartFn,
    authenticate: HandleFlagsFn,
    acct_mgmt: HandleFlagsFn,
    end: HandleFlagsFn,
    strerror: StrerrorFn,
}

static PAM: OnceLock<Result<Pam, String>> = OnceLock::new();

fn load() -> Result<Pam, String> {
    let why = |e: libloading::Error| {
        format!("cannot load {LIBRARY} (install Debian's libpam0g package): {e}")
    };
    // SAFETY: loading libpam runs its ELF initialisers; Linux-PAM's have no preconditions and
    // are safe to run on any thread at any time.
    let library = unsafe { libloading::Library::new(LIBRARY) }.map_err(why)?;
    // SAFETY: each symbol is looked up by its exact Linux-PAM name and given the C signature
    // declared for it in <security/pam_appl.h> (above). The pointers are copied out while
    // `library` is alive and stored beside it, which keeps the library loaded.
    let pam = unsafe {
        let start: StartFn = *library.get::<StartFn>(b"pam_start\0").map_err(why)?;
        let authenticate: HandleFlagsFn = *library
            .get::<HandleFlagsFn>(b"pam_authenticate\0")
            .map_err(why)?;
        let acct_mgmt: HandleFlagsFn = *library
            .get::<HandleFlagsFn>(b"pam_acct_mgmt\0")
            .map_err(why)?;
        let end: HandleFlagsFn = *library.get::<HandleFlagsFn>(b"pam_end\0").map_err(why)?;
        let strerror: StrerrorFn = *library.get::<StrerrorFn>(b"pam_strerror\0").map_err(why)?;
        Pam {
            _library: library,
            start,
            authenticate,
            acct_mgmt,
            end,
            strerror,
        }
    };
    Ok(pam)
}

fn library() -> Result<&'static Pam, PamError> {
    PAM.get_or_init(load)
        .as_ref()
        .map_err(|e| PamError::Unavailable(e.clone()))
}

/// Why a PAM check did not pass. The texts name the PAM step and code, never the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PamError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Input(&'static str),
    #[error("cannot start PAM service {service:?} (is /etc/pam.d/{service} there?): {text} (code {code})")]
    Start {
        service: String,
        code: i32,
        text: String,
    },
    #[error("PAM service {service:?} refused at {step}: {text} (code {code})")]
    Refused {
        service: String,
        step: &'static str,
        code: i32,
        text: String,
    },
}

/// What the conversation answers with. Read (never written) by [`converse`] through
/// `appdata_ptr` while `pam_authenticate`/`pam_acct_mgmt` run.
struct Answers {
    user: CString,
    password: CString,
}

/// Read a C string of at most `max` bytes; `None` for a null pointer. Never reads past `max`
/// bytes even when there is no NUL.
///
/// # Safety
/// `p` is null or points to memory readable up to its NUL or `max` bytes, whichever comes first.
unsafe fn bounded_text(p: *const c_char, max: usize) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `p` is readable up to a NUL or `max` bytes; strnlen reads
    // no further than either.
    let len = unsafe { libc::strnlen(p, max) };
    // SAFETY: `len` bytes from `p` were just found readable (none of them NUL).
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Overwrite a C string with zeros, then free it (it came from `strdup`).
///
/// # Safety
/// `p` is null or a NUL-terminated string allocated by the C allocator and owned by the caller.
unsafe fn wipe_and_free(p: *mut c_char) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` is a NUL-terminated string we own (contract above); volatile writes stay
    // within its length and are not optimised away; then it is freed once.
    unsafe {
        let len = libc::strlen(p);
        for i in 0..len {
            std::ptr::write_volatile(p.add(i), 0);
        }
        libc::free(p.cast::<c_void>());
    }
}

/// The conversation function handed to `pam_start`. Never unwinds: any panic inside becomes
/// `PAM_CONV_ERR`.
///
/// # Safety
/// Called by Linux-PAM with its documented contract: `msg` points to `num_msg` message pointers,
/// `resp` is writable, `appdata_ptr` is the pointer given in `pam_conv` (an [`Answers`]).
pub unsafe extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    // SAFETY: forwarded unchanged under the same contract as this function's.
    let body = AssertUnwindSafe(|| unsafe { converse_inner(num_msg, msg, resp, appdata_ptr) });
    std::panic::catch_unwind(body).unwrap_or(PAM_CONV_ERR)
}

/// # Safety
/// As [`converse`].
unsafe fn converse_inner(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    if msg.is_null() || resp.is_null() || appdata_ptr.is_null() {
        return PAM_CONV_ERR;
    }
    let n = match usize::try_from(num_msg) {
        Ok(n) if (1..=MAX_MESSAGES).contains(&n) => n,
        _ => return PAM_CONV_ERR,
    };
    // SAFETY: `appdata_ptr` is the `Answers` that `authenticate` put in `pam_conv`; it outlives
    // the PAM handle and is only read here.
    let answers = unsafe { &*appdata_ptr.cast::<Answers>() };
    // SAFETY: calloc with a bounded count (≤ MAX_MESSAGES) of a small struct; a null result is
    // handled. PAM frees this array (and each `resp`) with free().
    let replies =
        unsafe { libc::calloc(n, std::mem::size_of::<PamResponse>()) }.cast::<PamResponse>();
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    let mut code = PAM_SUCCESS;
    for i in 0..n {
        // SAFETY: Linux-PAM passes `num_msg` message pointers at `msg`; `i < n == num_msg`.
        let m = unsafe { *msg.add(i) };
        if m.is_null() {
            code = PAM_CONV_ERR;
            break;
        }
        // SAFETY: `m` is a non-null message pointer from PAM; its text is a C string (or null)
        // that `bounded_text` reads at most MAX_MESSAGE_BYTES of.
        let (style, text) = unsafe { ((*m).msg_style, bounded_text((*m).msg, MAX_MESSAGE_BYTES)) };
        let answer = match style {
            PAM_PROMPT_ECHO_ON => Some(&answers.user),
            PAM_PROMPT_ECHO_OFF => Some(&answers.password),
            PAM_TEXT_INFO => {
                tracing::debug!(
                    pam_message = text.as_deref().unwrap_or(""),
                    "PAM information"
                );
                None
            }
            PAM_ERROR_MSG => {
                tracing::debug!(
                    pam_message = text.as_deref().unwrap_or(""),
                    "PAM error message"
                );
                None
            }
            other => {
                tracing::debug!(style = other, "PAM asked a question keyhole cannot answer");
                code = PAM_CONV_ERR;
                break;
            }
        };
        if let Some(a) = answer {
            // SAFETY: `a` is a valid NUL-terminated CString; strdup copies it with malloc.
            let copy = unsafe { libc::strdup(a.as_ptr()) };
            if copy.is_null() {
                code = PAM_BUF_ERR;
                break;
            }
            // SAFETY: `replies` has `n` zeroed elements and `i < n`.
            unsafe { (*replies.add(i)).resp = copy };
        }
    }
    if code != PAM_SUCCESS {
        for i in 0..n {
            // SAFETY: `i < n`; each `resp` is null or a strdup'd copy made above.
            unsafe { wipe_and_free((*replies.add(i)).resp) };
        }
        // SAFETY: `replies` came from calloc above and is freed once; PAM never saw it.
        unsafe { libc::free(replies.cast::<c_void>()) };
        return code;
    }
    // SAFETY: `resp` is non-null and writable (PAM's contract); ownership of `replies` passes
    // to PAM, which frees it.
    unsafe { *resp = replies };
    PAM_SUCCESS
}

fn error_text(pam: &Pam, handle: *mut PamHandle, code: c_int) -> String {
    // SAFETY: pam_strerror accepts any handle (even null) and code and returns a static string
    // or null; it is read with a bound.
    unsafe { bounded_text((pam.strerror)(handle, code), MAX_ERROR_TEXT_BYTES) }
        .unwrap_or_else(|| "unknown PAM error".into())
}

/// `pam_authenticate` then `pam_acct_mgmt` for `user` in `service` (an `/etc/pam.d` file).
/// Empty passwords never pass (`PAM_DISALLOW_NULL_AUTHTOK`); PAM prints nothing (`PAM_SILENT`).
pub fn authenticate(service: &str, user: &str, password: &str) -> Result<(), PamError> {
    if user.contains('\0') || password.contains('\0') || service.contains('\0') {
        return Err(PamError::Input(
            "the service, name or password contains a NUL byte",
        ));
    }
    if user.len() > MAX_ANSWER_BYTES || password.len() > MAX_ANSWER_BYTES {
        return Err(PamError::Input(
            "the name or password is longer than PAM accepts (512 bytes)",
        ));
    }
    let (Ok(c_service), Ok(c_user), Ok(c_password)) = (
        CString::new(service),
        CString::new(user),
        CString::new(password),
    ) else {
        return Err(PamError::Input(
            "a NUL byte in the service, name or password",
        ));
    };
    let pam = library()?;
    let answers = Answers {
        user: c_user,
        password: c_password,
    };
    let conv = PamConv {
        conv: Some(converse),
        appdata_ptr: std::ptr::from_ref(&answers).cast_mut().cast::<c_void>(),
    };
    let mut handle: *mut PamHandle = std::ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and live until pam_end; `conv` and `answers` are
    // on this stack frame, which outlives the handle (pam_end runs below before returning);
    // `handle` is a valid out-pointer.
    let started = unsafe {
        (pam.start)(
            c_service.as_ptr(),
            answers.user.as_ptr(),
            &conv,
            &mut handle,
        )
    };
    if started != PAM_SUCCESS || handle.is_null() {
        return Err(PamError::Start {
            service: service.to_string(),
            code: started,
            text: error_text(pam, handle, started),
        });
    }
    let flags = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK;
    // SAFETY: `handle` came from a successful pam_start and has not been ended.
    let mut status = unsafe { (pam.authenticate)(handle, flags) };
    let mut step = "authentication";
    if status == PAM_SUCCESS {
        step = "account check";
        // SAFETY: as above.
        status = unsafe { (pam.acct_mgmt)(handle, flags) };
    }
    let result = if status == PAM_SUCCESS {
        Ok(())
    } else {
        Err(PamError::Refused {
            service: service.to_string(),
            step,
            code: status,
            text: error_text(pam, handle, status),
        })
    };
    // SAFETY: ends the handle exactly once; it is not used afterwards.
    unsafe { (pam.end)(handle, status) };
    // `answers` (and the CStrings the conversation copied from) are dropped only now.
    drop(answers);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn answers() -> Answers {
        Answers {
            user: CString::new("alice").unwrap(),
            password: CString::new("s3cret").unwrap(),
        }
    }

    fn message(style: c_int, text: &CStr) -> PamMessage {
        PamMessage {
            msg_style: style,
            msg: text.as_ptr(),
        }
    }

    /// Call the conversation as PAM would; returns the code and the answers it gave.
    fn call(
        msgs: &[PamMessage],
        count: c_int,
        a: &Answers,
    ) -> (c_int, Option<Vec<Option<String>>>) {
        let mut ptrs: Vec<*const PamMessage> = msgs.iter().map(std::ptr::from_ref).collect();
        let mut resp: *mut PamResponse = std::ptr::null_mut();
        let data = std::ptr::from_ref(a).cast_mut().cast::<c_void>();
        // SAFETY: test-only calls of the conversation exactly as libpam makes them: every pointer is
        // live for the call, `count` matches the array, and what it allocates is freed here once.
        let code = unsafe { converse(count, ptrs.as_mut_ptr(), &mut resp, data) };
        if resp.is_null() {
            return (code, None);
        }
        let n = usize::try_from(count).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let r = unsafe { (*resp.add(i)).resp };
            out.push(unsafe { bounded_text(r, 1024) });
            unsafe { wipe_and_free(r) };
        }
        // SAFETY: test-only calls of the conversation exactly as libpam makes them: every pointer is
        // live for the call, `count` matches the array, and what it allocates is freed here once.
        unsafe { libc::free(resp.cast()) };
        (code, Some(out))
    }

    #[test]
    fn answers_name_and_password_and_skips_information() {
        let a = answers();
        let login = CString::new("login:").unwrap();
        let pw = CString::new("Password: ").unwrap();
        let info = CString::new("Last login: never").unwrap();
        let msgs = [
            message(PAM_PROMPT_ECHO_ON, &login),
            message(PAM_TEXT_INFO, &info),
            message(PAM_PROMPT_ECHO_OFF, &pw),
        ];
        let (code, out) = call(&msgs, 3, &a);
        assert_eq!(code, PAM_SUCCESS);
        assert_eq!(
            out.unwrap(),
            vec![Some("alice".to_string()), None, Some("s3cret".to_string())]
        );
    }

    #[test]
    fn refuses_bad_counts_and_unknown_styles_without_answering() {
        let a = answers();
        let pw = CString::new("Password: ").unwrap();
        let one = [message(PAM_PROMPT_ECHO_OFF, &pw)];
        for bad in [0, -1, c_int::MIN] {
            assert_eq!(call(&one, bad, &a), (PAM_CONV_ERR, None), "count {bad}");
        }
        let many: Vec<PamMessage> = (0..=MAX_MESSAGES)
            .map(|_| message(PAM_PROMPT_ECHO_OFF, &pw))
            .collect();
        let count = c_int::try_from(many.len()).unwrap();
        assert_eq!(call(&many, count, &a), (PAM_CONV_ERR, None));
        // A radio-button question (Linux-PAM's PAM_RADIO_TYPE, 5) after a prompt: the
        // password already copied is wiped and freed, nothing is handed back.
        let radio = [message(PAM_PROMPT_ECHO_OFF, &pw), message(5, &pw)];
        assert_eq!(call(&radio, 2, &a), (PAM_CONV_ERR, None));
    }

    #[test]
    fn null_pointers_are_refused() {
        let a = answers();
        let data = std::ptr::from_ref(&a).cast_mut().cast::<c_void>();
        let mut resp: *mut PamResponse = std::ptr::null_mut();
        // SAFETY: test-only calls of the conversation exactly as libpam makes them: every pointer is
        // live for the call, `count` matches the array, and what it allocates is freed here once.
        let code = unsafe { converse(1, std::ptr::null_mut(), &mut resp, data) };
        assert_eq!(code, PAM_CONV_ERR);
        let pw = CString::new("Password: ").unwrap();
        let m = message(PAM_PROMPT_ECHO_OFF, &pw);
        let mut ptrs = [std::ptr::from_ref(&m)];
        let code = unsafe { converse(1, ptrs.as_mut_ptr(), std::ptr::null_mut(), data) };
        assert_eq!(code, PAM_CONV_ERR);
        let code = unsafe { converse(1, ptrs.as_mut_ptr(), &mut resp, std::ptr::null_mut()) };
        assert_eq!(code, PAM_CONV_ERR);
        let mut null_msg = [std::ptr::null::<PamMessage>()];
        let code = unsafe { converse(1, null_msg.as_mut_ptr(), &mut resp, data) };
        assert_eq!(code, PAM_CONV_ERR);
        assert!(resp.is_null());
    }

    #[test]
    fn message_text_is_read_with_a_bound() {
        // 600 bytes and no NUL anywhere: the reader stops at MAX_MESSAGE_BYTES.
        let raw = vec![b'A'; 600];
        // SAFETY: test-only calls of the conversation exactly as libpam makes them: every pointer is
        // live for the call, `count` matches the array, and what it allocates is freed here once.
        let text = unsafe { bounded_text(raw.as_ptr().cast(), MAX_MESSAGE_BYTES) }.unwrap();
        assert_eq!(text.len(), MAX_MESSAGE_BYTES);
        assert_eq!(unsafe { bounded_text(std::ptr::null(), 10) }, None);
    }

    #[test]
    fn inputs_are_checked_before_pam() {
        assert!(matches!(
            authenticate("login", "a\0b", "x"),
            Err(PamError::Input(_))
        ));
        let long = "x".repeat(MAX_ANSWER_BYTES + 1);
        assert!(matches!(
            authenticate("login", "alice", &long),
            Err(PamError::Input(_))
        ));
    }

    #[test]
    fn a_missing_service_is_an_error_not_a_pass() {
        // Linux-PAM falls back to /etc/pam.d/other (deny on Debian) for an unknown service.
        let r = authenticate("keyhole-no-such-service-xyz", "root", "wrong");
        assert!(r.is_err(), "{r:?}");
    }
}
