//! The guest's side of the host functions.
//!
//! In a wasm build these are imports from the `finaldot` module: the only
//! imports a plugin has (no WASI, so no ambient authority). In a native build
//! (a plugin's own `cargo test`) they go to the [`crate::testing::TestHost`]
//! installed for the current thread, so the same plugin code runs unchanged.

use crate::wire::{HostRequest, HostResponse, Level};

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;

    #[link(wasm_import_module = "finaldot")]
    extern "C" {
        #[link_name = "log"]
        fn host_log(level: u32, ptr: *const u8, len: usize);
        #[link_name = "panic"]
        fn host_panic(ptr: *const u8, len: usize);
        #[link_name = "body_read"]
        fn host_body_read(offset: u64, ptr: *mut u8, len: usize) -> i64;
        #[link_name = "now_ms"]
        fn host_now_ms() -> u64;
        #[link_name = "call"]
        fn host_call(ptr: *const u8, len: usize) -> u64;
    }

    pub fn log(level: Level, message: &str) {
        // SAFETY: the pointer and length describe a live slice for the call.
        unsafe { host_log(level as u32, message.as_ptr(), message.len()) }
    }

    pub fn panic(message: &str) {
        // SAFETY: as above.
        unsafe { host_panic(message.as_ptr(), message.len()) }
    }

    pub fn body_read(offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { host_body_read(offset, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            Err("the host could not read the body".to_string())
        } else {
            Ok(n as usize)
        }
    }

    pub fn now_ms() -> u64 {
        // SAFETY: no arguments.
        unsafe { host_now_ms() }
    }

    pub fn call(request: &HostRequest) -> HostResponse {
        let bytes = match postcard::to_allocvec(request) {
            Ok(b) => b,
            Err(e) => {
                return HostResponse::Error {
                    kind: crate::wire::HostErrorKind::Invalid,
                    message: format!("encoding request: {e}"),
                }
            }
        };
        // SAFETY: the host reads `bytes` and returns a buffer it allocated
        // through our exported `finaldot_alloc`, which we now own.
        let packed = unsafe { host_call(bytes.as_ptr(), bytes.len()) };
        let out = unsafe { crate::export::take_buffer(packed) };
        postcard::from_bytes(&out).unwrap_or_else(|e| HostResponse::Error {
            kind: crate::wire::HostErrorKind::Invalid,
            message: format!("decoding response: {e}"),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use crate::testing::with_host;

    pub fn log(level: Level, message: &str) {
        with_host(|h| h.log(level, message));
    }

    pub fn panic(message: &str) {
        with_host(|h| h.log(Level::Error, &format!("panic: {message}")));
    }

    pub fn body_read(offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        with_host(|h| Ok(h.body_read(offset, buf)))
    }

    pub fn now_ms() -> u64 {
        with_host(|h| h.now_ms())
    }

    pub fn call(request: &HostRequest) -> HostResponse {
        with_host(|h| h.call(request))
    }
}

pub(crate) use imp::{body_read, call, log, now_ms};

#[allow(unused_imports)]
pub(crate) use imp::panic;
