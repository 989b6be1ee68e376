//! The ABI v1 exports that [`export_plugin!`](crate::export_plugin) generates
//! thin wrappers around.
//!
//! Exports (all `extern "C"`):
//! - `finaldot_abi_version() -> u32`
//! - `finaldot_alloc(len: u32) -> u32` and `finaldot_dealloc(ptr: u32, len: u32)`
//! - `finaldot_info() -> u64`: output `GuestResult<PluginInfo>` (name, version,
//!   the ABI features it needs)
//! - `finaldot_configure(ptr: u32, len: u32) -> u64`: input [`ConfigureInput`],
//!   output `GuestResult<PluginInfo>`
//! - `finaldot_on_message(ptr: u32, len: u32) -> u64`: input [`MessageInput`],
//!   output `GuestResult<MessageOutput>`
//! - `finaldot_on_door(ptr: u32, len: u32) -> u64`: input [`DoorInput`],
//!   output `GuestResult<DoorOutput>` (ABI feature `door-stages`; a module
//!   without it is not a door plugin)
//!
//! A `u64` result packs the output buffer as `ptr << 32 | len`; the buffer was
//! allocated with `finaldot_alloc` and the host frees it with `finaldot_dealloc`.

use std::sync::Mutex;

use crate::plugin::{Context, Message, Plugin};
use crate::wire::{
    ConfigureInput, DoorInput, DoorOutput, DoorStage, GuestResult, MessageInput, MessageOutput,
    PluginInfo, ABI_VERSION,
};

/// Allocates `len` bytes for the host to write into.
pub fn alloc(len: u32) -> u32 {
    let mut buf: Vec<u8> = Vec::with_capacity(len as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as u32
}

/// Frees a buffer from [`alloc`].
///
/// # Safety
/// `ptr` and `len` must come from one earlier [`alloc`] (or a packed output)
/// and not have been freed.
pub unsafe fn dealloc(ptr: u32, len: u32) {
    // SAFETY: the caller guarantees the buffer came from `alloc(len)`.
    unsafe {
        drop(Vec::from_raw_parts(
            ptr as usize as *mut u8,
            0,
            len as usize,
        ))
    }
}

/// Takes ownership of a packed buffer the host allocated in our memory.
///
/// # Safety
/// `packed` must describe a buffer allocated by [`alloc`] and filled by the host.
pub unsafe fn take_buffer(packed: u64) -> Vec<u8> {
    let ptr = (packed >> 32) as usize as *mut u8;
    let len = (packed & 0xffff_ffff) as usize;
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `alloc(len)` made it and the host filled `len` bytes.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

fn pack(out: Vec<u8>) -> u64 {
    let mut out = out.into_boxed_slice();
    let len = out.len() as u64;
    let ptr = out.as_mut_ptr() as usize as u64;
    std::mem::forget(out);
    (ptr << 32) | len
}

fn encode<T: serde::Serialize>(value: &GuestResult<T>) -> u64 {
    match postcard::to_allocvec(value) {
        Ok(v) => pack(v),
        Err(_) => 0,
    }
}

/// Reads the input the host wrote at `ptr` (and frees it).
///
/// # Safety
/// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
unsafe fn input(ptr: u32, len: u32) -> Vec<u8> {
    // SAFETY: per the function contract.
    unsafe { take_buffer((u64::from(ptr) << 32) | u64::from(len)) }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::host::panic(&info.to_string());
        }));
    });
}

/// The state behind the exports: the plugin instance of this wasm instance.
pub struct Slot<P: Plugin> {
    plugin: Mutex<Option<P>>,
}

impl<P: Plugin> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Slot<P> {
    /// An empty slot (usable in a `static`).
    pub const fn new() -> Self {
        Slot {
            plugin: Mutex::new(None),
        }
    }

    /// `finaldot_configure`.
    ///
    /// # Safety
    /// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
    pub unsafe fn configure(&self, ptr: u32, len: u32, name: &str, version: &str) -> u64 {
        install_panic_hook();
        // SAFETY: per the function contract.
        let bytes = unsafe { input(ptr, len) };
        let result = match postcard::from_bytes::<ConfigureInput>(&bytes) {
            Err(e) => GuestResult::Err(format!("configure input does not decode: {e}")),
            Ok(cfg) if cfg.abi != ABI_VERSION => GuestResult::Err(format!(
                "host speaks ABI {}, plugin {}",
                cfg.abi, ABI_VERSION
            )),
            Ok(cfg) => {
                let mut plugin = P::default();
                match plugin.on_configure(&crate::plugin::Config::new(cfg.name, cfg.config)) {
                    Ok(()) => {
                        if let Ok(mut slot) = self.plugin.lock() {
                            *slot = Some(plugin);
                        }
                        GuestResult::Ok(PluginInfo::of_this_sdk(name, version))
                    }
                    Err(e) => GuestResult::Err(e.to_string()),
                }
            }
        };
        encode(&result)
    }

    /// `finaldot_on_message`.
    ///
    /// # Safety
    /// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
    pub unsafe fn on_message(&self, ptr: u32, len: u32) -> u64 {
        install_panic_hook();
        // SAFETY: per the function contract.
        let bytes = unsafe { input(ptr, len) };
        let result = match postcard::from_bytes::<MessageInput>(&bytes) {
            Err(e) => GuestResult::Err(format!("message input does not decode: {e}")),
            Ok(m) if m.abi != ABI_VERSION => {
                GuestResult::Err(format!("host speaks ABI {}, plugin {}", m.abi, ABI_VERSION))
            }
            Ok(m) => {
                let mut guard = match self.plugin.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let plugin = guard.get_or_insert_with(P::default);
                let cx = Context::new(m.queue_id.clone());
                let mut msg = Message::from_input(m);
                match plugin.on_message(&mut msg, &cx) {
                    Ok(verdict) => GuestResult::Ok(MessageOutput {
                        abi: ABI_VERSION,
                        verdict,
                        changes: msg.into_changes(),
                    }),
                    Err(e) => GuestResult::Err(e.to_string()),
                }
            }
        };
        encode(&result)
    }
}

impl<P: Plugin> Slot<P> {
    /// `finaldot_on_door`.
    ///
    /// # Safety
    /// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
    pub unsafe fn on_door(&self, ptr: u32, len: u32) -> u64 {
        install_panic_hook();
        // SAFETY: per the function contract.
        let bytes = unsafe { input(ptr, len) };
        let result = match postcard::from_bytes::<DoorInput>(&bytes) {
            Err(e) => GuestResult::Err(format!("door input does not decode: {e}")),
            Ok(d) if d.abi != ABI_VERSION => {
                GuestResult::Err(format!("host speaks ABI {}, plugin {}", d.abi, ABI_VERSION))
            }
            Ok(d) => {
                let mut guard = match self.plugin.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let plugin = guard.get_or_insert_with(P::default);
                let cx = Context::new(String::new());
                let door = crate::plugin::Door::from_input(d);
                let verdict = match door.stage() {
                    DoorStage::Connect => plugin.on_connect(&door, &cx),
                    DoorStage::Helo => plugin.on_helo(&door, &cx),
                    DoorStage::Mail => plugin.on_mail(&door, &cx),
                    DoorStage::Rcpt => plugin.on_rcpt(&door, &cx),
                };
                match verdict {
                    Ok(verdict) => GuestResult::Ok(DoorOutput {
                        abi: ABI_VERSION,
                        verdict,
                    }),
                    Err(e) => GuestResult::Err(e.to_string()),
                }
            }
        };
        encode(&result)
    }
}

/// `finaldot_info`: the plugin's crate name and version, without configuring it.
pub fn info(name: &str, version: &str) -> u64 {
    encode(&GuestResult::Ok(PluginInfo::of_this_sdk(name, version)))
}

/// Exports a [`Plugin`] type as a finaldot ABI v1 WebAssembly module.
///
/// ```ignore
/// finaldot_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        static __FINALDOT_SLOT: $crate::export::Slot<$plugin> = $crate::export::Slot::new();

        /// ABI version this plugin speaks.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_abi_version() -> u32 {
            $crate::wire::ABI_VERSION
        }

        /// Allocates a buffer for the host.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_alloc(len: u32) -> u32 {
            $crate::export::alloc(len)
        }

        /// Frees a buffer.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_dealloc(ptr: u32, len: u32) {
            // SAFETY: the host passes back a buffer it got from finaldot_alloc or an output.
            unsafe { $crate::export::dealloc(ptr, len) }
        }

        /// The plugin's name and version.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_info() -> u64 {
            $crate::export::info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
        }

        /// Configures the plugin.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_configure(ptr: u32, len: u32) -> u64 {
            // SAFETY: the host wrote the input into a buffer from finaldot_alloc.
            unsafe {
                __FINALDOT_SLOT.configure(
                    ptr,
                    len,
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                )
            }
        }

        /// Runs the plugin on one message.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_on_message(ptr: u32, len: u32) -> u64 {
            // SAFETY: the host wrote the input into a buffer from finaldot_alloc.
            unsafe { __FINALDOT_SLOT.on_message(ptr, len) }
        }

        /// Runs the plugin at one door stage.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn finaldot_on_door(ptr: u32, len: u32) -> u64 {
            // SAFETY: the host wrote the input into a buffer from finaldot_alloc.
            unsafe { __FINALDOT_SLOT.on_door(ptr, len) }
        }
    };
}
