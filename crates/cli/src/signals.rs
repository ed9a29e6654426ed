//! Signals during an export. SIGINT, SIGTERM and SIGHUP are handled alike: the handler
//! only records which signal came and raises the shared cancel flag; the export then stops
//! at the next frame, removes its temporary file, leaves no row that looks delivered and
//! exits with 128 + the signal number (130, 143, 129). A second signal of the same kind
//! gets the default action (the handler is reset after the first), so a stuck job can
//! still be killed; what it leaves is removed by the next run into that directory.
//!
//! SIGXFSZ (a file-size limit reached) is ignored, so the write fails with `EFBIG` and the
//! ordinary error path cleans up instead of the process dying with a partial file.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::{Arc, OnceLock};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// The cancel flag the handler raises (leaked: it lives as long as the process).
static FLAG_PTR: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());
static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The signals that cancel an export.
const CANCELLING: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomic loads and stores here: async-signal-safe.
    let _ = RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    let flag = FLAG_PTR.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: the pointer comes from `Arc::into_raw` of an Arc that is never released.
        unsafe { (*flag).store(true, Ordering::SeqCst) };
    }
}

/// Installs the handlers (once per process) and returns the cancel flag they raise.
pub fn install() -> Arc<AtomicBool> {
    Arc::clone(FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        FLAG_PTR.store(Arc::into_raw(Arc::clone(&flag)).cast_mut(), Ordering::SeqCst);
        let handler: extern "C" fn(libc::c_int) = on_signal;
        for sig in CANCELLING {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
            // handler only touches atomics (async-signal-safe); sigaction is given valid
            // pointers. SA_RESETHAND: a second signal gets the default action.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler as libc::sighandler_t;
                libc::sigemptyset(&mut sa.sa_mask);
                sa.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // SAFETY: setting a signal's disposition to "ignore" has no memory effects.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        flag
    }))
}

/// The signal that cancelled the job, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status for a job stopped by `sig`: 128 + its number (SIGINT when unknown).
pub fn exit_code(sig: Option<i32>) -> u8 {
    let sig = sig.unwrap_or(libc::SIGINT);
    u8::try_from(128 + sig).unwrap_or(130)
}

/// The signal's name, for messages.
pub fn name(sig: Option<i32>) -> &'static str {
    match sig {
        Some(libc::SIGTERM) => "SIGTERM",
        Some(libc::SIGHUP) => "SIGHUP",
        _ => "SIGINT (Ctrl-C)",
    }
}
