//! The plugin runtime: WebAssembly plugins on wasmtime, with limits and
//! capabilities, speaking ABI v1 (defined once, in `finaldot-sdk`).
//!
//! It owns one [`Runtime`] per process (one `Engine` with epoch interruption
//! and the pooling allocator, and the thread that ticks the epoch), loading a
//! `.wasm` into a checked [`LoadedModule`] (compiled once, cached on disk by
//! content hash and engine settings, ABI version checked before anything
//! else), and [`Plugin`]: a module plus its configuration, limits and grants,
//! called once per message on a fresh instance (or a reused one, if asked).
//!
//! SECURITY: a plugin is untrusted code. It imports nothing but finaldot's own
//! host functions (no WASI: a module importing anything else is refused at
//! load), so it has no ambient authority; it reaches files and state only
//! through grants ([`caps`]). Each call runs under a wall-clock limit (epoch
//! interruption) and a memory cap; traps, panics, timeouts, memory-limit hits
//! and malformed output are [`PluginError`] values naming the plugin and its
//! version, never a crash or hang of the host. The compiled-module cache is
//! trusted like the binary itself: it lives in the daemon's own data directory.

pub mod builtin;
mod call;
mod caps;
pub mod http;
pub mod instance;
pub mod kv;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use finaldot_sdk::wire::{
    DoorInput, DoorVerdict, GuestResult, MessageInput, MessageOutput, PluginInfo, Value,
    ABI_VERSION,
};
use sha2::Digest;
use wasmtime::{Engine, InstancePre, Linker, Module, Store};

pub use caps::{DirGrant, DnsGrant, Grants, OpenGrants};
pub use http::HttpGrant;
pub use instance::{Body, LogLine, PluginInstance};

/// SHA-256 of `bytes` as lowercase hex: a plugin's identity (and the name of
/// a key-value file).
pub fn content_hash(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often the epoch clock ticks; time limits are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for one call.
    pub timeout: Duration,
    /// Linear memory cap in bytes.
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory: 64 * 1024 * 1024,
        }
    }
}

/// What went wrong in a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The module is not valid WebAssembly or did not compile.
    #[error("does not compile: {0}")]
    Compile(String),
    /// The module imports something other than finaldot's host functions.
    #[error("imports are not allowed: {0}")]
    Import(String),
    /// The module reports an ABI version this host does not speak.
    #[error("ABI version {found} is not supported (this host supports {supported})")]
    AbiMismatch {
        /// What the module reported.
        found: u32,
        /// What this host speaks.
        supported: u32,
    },
    /// A required export is missing or has the wrong type.
    #[error("missing export {0}")]
    MissingExport(String),
    /// The plugin refused its configuration.
    #[error("refused its configuration: {0}")]
    Configure(String),
    /// The plugin returned an error from `on_message`.
    #[error("returned an error: {0}")]
    Guest(String),
    /// The plugin panicked.
    #[error("panicked: {0}")]
    Panic(String),
    /// The call failed after a service it needed (a remote key-value
    /// store) could not answer: not the plugin's fault, the message waits.
    #[error("could not finish: {0}")]
    Unavailable(String),
    /// The call ran past its time limit.
    #[error("timed out after {after:?} (limit {limit:?})")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// When it was stopped.
        after: Duration,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("memory limit of {0} bytes reached")]
    MemoryLimit(usize),
    /// The plugin exhausted its stack.
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap (`unreachable`, out-of-bounds access, …).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin's output did not decode.
    #[error("malformed output: {0}")]
    MalformedOutput(String),
    /// The plugin needs ABI features this host does not have (it was built
    /// with a newer finaldot-sdk).
    #[error("needs {} this finaldot does not have: {} (it was built with a newer finaldot-sdk: upgrade finaldot, or rebuild the plugin against finaldot-sdk {})", if .0.len() == 1 { "an ABI feature" } else { "ABI features" }, .0.join(", "), env!("CARGO_PKG_VERSION"))]
    NeedsFeatures(Vec<String>),
}

/// A plugin failure, naming the plugin and its version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} ({version}) {fault}")]
pub struct PluginError {
    /// The plugin's name in the configuration (or its file when loading).
    pub plugin: String,
    /// Its version label (crate name, version and content hash), or "not loaded".
    pub version: String,
    /// What happened.
    pub fault: Fault,
}

impl PluginError {
    /// A new error.
    pub fn new(plugin: &str, version: &str, fault: Fault) -> Self {
        PluginError {
            plugin: plugin.to_string(),
            version: version.to_string(),
            fault,
        }
    }
}

/// Limits how many plugin calls run WebAssembly at once (the CPU-bound part),
/// so that plugin work can never take every core from the SMTP threads. A
/// call gives its slot back while the host does I/O for it (a capability
/// request), so disk waits never hold a core's slot.
#[derive(Debug)]
pub struct CpuGate {
    free: std::sync::Mutex<Slots>,
    wake: std::sync::Condvar,
}

/// The gate's count: free slots, and threads waiting for one (a slot given
/// back wakes a waiter only when there is one: no system call otherwise).
#[derive(Debug)]
struct Slots {
    free: usize,
    waiting: usize,
}

/// A held slot of the [`CpuGate`]; released on drop.
pub struct CpuSlot<'a>(&'a CpuGate);

impl CpuGate {
    /// A gate with `slots` slots (at least 1).
    pub fn new(slots: usize) -> CpuGate {
        CpuGate {
            free: std::sync::Mutex::new(Slots {
                free: slots.max(1),
                waiting: 0,
            }),
            wake: std::sync::Condvar::new(),
        }
    }

    /// Waits for a slot.
    pub fn enter(&self) -> CpuSlot<'_> {
        let mut free = match self.free.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        while free.free == 0 {
            free.waiting += 1;
            free = match self.wake.wait(free) {
                Ok(f) => f,
                Err(p) => p.into_inner(),
            };
            free.waiting -= 1;
        }
        free.free -= 1;
        CpuSlot(self)
    }

    /// Lends the calling thread's slot out while it waits on I/O; the
    /// returned guard takes a slot again (waiting if need be) when dropped.
    pub fn pause(&self) -> Paused<'_> {
        self.leave();
        Paused(self)
    }

    fn leave(&self) {
        let mut free = match self.free.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        free.free += 1;
        if free.waiting > 0 {
            self.wake.notify_one();
        }
    }
}

/// A slot lent out by [`CpuGate::pause`]; taken back on drop.
pub struct Paused<'a>(&'a CpuGate);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        std::mem::forget(self.0.enter());
    }
}

impl Drop for CpuSlot<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled modules are cached; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once (the pool's size).
    pub max_instances: u32,
    /// Largest memory any plugin may be given.
    pub max_memory: usize,
    /// Plugin calls running WebAssembly at once (see [`CpuGate`]).
    pub max_running: usize,
}

/// One less than the number of cores (at least one): what the pipeline may
/// use without ever taking the last core from the SMTP threads.
pub fn default_max_running() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            max_instances: 128,
            max_memory: 1024 * 1024 * 1024,
            max_running: default_max_running(),
        }
    }
}

/// The process's plugin runtime.
pub struct Runtime {
    engine: Engine,
    gate: Arc<CpuGate>,
    linker: Linker<instance::HostState>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("plugin runtime: {0}")]
pub struct RuntimeError(String);

impl Runtime {
    /// Creates the engine and starts the epoch ticker.
    pub fn new(opts: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        config.wasm_backtrace_max_frames(None);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(opts.max_instances);
        pool.total_memories(opts.max_instances);
        pool.total_tables(opts.max_instances);
        pool.max_memory_size(opts.max_memory);
        // Reset a freed slot by copying back only the pages the instance
        // wrote (found with Linux's PAGEMAP_SCAN, 6.7 and later), up to 2 MiB,
        // instead of madvise: no system call that unmaps, no TLB shootdown
        // across cores (which cost more than the plugin call itself), and
        // the next instance takes no page faults there. Without
        // PAGEMAP_SCAN, the first 128 KiB are reset with memset and the
        // rest with madvise. Costs what the instance wrote (at most 2 MiB)
        // of resident memory per warm slot.
        let scan = wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
        pool.pagemap_scan(if scan {
            wasmtime::Enabled::Yes
        } else {
            wasmtime::Enabled::No
        });
        pool.linear_memory_keep_resident(if scan { 2 << 20 } else { 128 << 10 });
        pool.table_keep_resident(64 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        instance::define_host_functions(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        if let Some(dir) = &opts.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError(format!("creating cache {}: {e}", dir.display())))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError(format!("starting epoch thread: {e}")))?;
        }
        Ok(Runtime {
            engine,
            gate: Arc::new(CpuGate::new(opts.max_running)),
            linker,
            cache_dir: opts.cache_dir,
            engine_key,
            stop,
        })
    }

    /// Loads and checks a plugin file.
    pub fn load(&self, file: &Path) -> Result<Arc<LoadedModule>, PluginError> {
        let label = file.display().to_string();
        let bytes = std::fs::read(file)
            .map_err(|e| PluginError::new(&label, "not loaded", Fault::Io(e.to_string())))?;
        self.load_bytes(&bytes, file)
    }

    /// Loads and checks a plugin from bytes (`file` names it in errors).
    pub fn load_bytes(&self, bytes: &[u8], file: &Path) -> Result<Arc<LoadedModule>, PluginError> {
        let label = file.display().to_string();
        let fail = |fault| PluginError::new(&label, "not loaded", fault);
        let hash = content_hash(bytes);
        let started = Instant::now();
        let (module, from_cache) = self.compile(bytes, &hash).map_err(fail)?;
        let compile_time = started.elapsed();
        for import in module.imports() {
            if import.module() != "finaldot" {
                return Err(fail(Fault::Import(format!(
                    "{}::{} (a plugin may import only finaldot's host functions; no WASI)",
                    import.module(),
                    import.name()
                ))));
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| fail(Fault::Import(format!("{e:#}"))))?;
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        // The ABI version first: every ABI keeps `finaldot_abi_version() -> u32`.
        let info = self.probe(&pre).map_err(fail)?;
        let label = format!(
            "{} {} #{}",
            info.name,
            info.version,
            &hash[..12.min(hash.len())]
        );
        Ok(Arc::new(LoadedModule {
            label,
            module,
            pre,
            gate: self.gate.clone(),
            file: file.to_path_buf(),
            hash,
            info,
            exports,
            imports,
            loaded_at: SystemTime::now(),
            from_cache,
            compile_time,
        }))
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> Result<(Module, bool), Fault> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-{}.cwasm", self.engine_key)));
        if let Some(path) = &cached {
            if path.exists() {
                // SAFETY: the file is one this runtime serialized into its own
                // cache directory, keyed by the wasm's hash and this engine's
                // compatibility hash; wasmtime also checks its header.
                #[allow(unsafe_code)]
                let m = unsafe { Module::deserialize_file(&self.engine, path) };
                match m {
                    Ok(m) => return Ok((m, true)),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "ignoring unusable compiled-module cache entry")
                    }
                }
            }
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| {
            // wasmparser's messages span lines; keep the error on one.
            Fault::Compile(
                format!("{e:#}")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        if let Some(path) = &cached {
            if let Ok(ser) = module.serialize() {
                let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
                if std::fs::write(&tmp, &ser)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .is_err()
                {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok((module, false))
    }

    /// Instantiates once with nothing granted: checks the ABI version, the
    /// exports, and asks the plugin who it is.
    fn probe(&self, pre: &InstancePre<instance::HostState>) -> Result<PluginInfo, Fault> {
        let limits = Limits::default();
        let mut store = Store::new(&self.engine, instance::HostState::probe(limits));
        store.limiter(|s| s.limiter());
        store.epoch_deadline_trap();
        store.set_epoch_deadline((limits.timeout.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1);
        let inst = pre
            .instantiate(&mut store)
            .map_err(|e| Fault::Trap(format!("instantiation failed: {e:#}")))?;
        let abi = inst
            .get_typed_func::<(), u32>(&mut store, "finaldot_abi_version")
            .map_err(|_| Fault::MissingExport("finaldot_abi_version: () -> u32".into()))?
            .call(&mut store, ())
            .map_err(|e| Fault::Trap(format!("finaldot_abi_version: {e:#}")))?;
        if abi != ABI_VERSION {
            return Err(Fault::AbiMismatch {
                found: abi,
                supported: ABI_VERSION,
            });
        }
        for (name, sig) in [
            ("finaldot_alloc", "(u32) -> u32"),
            ("finaldot_dealloc", "(u32, u32)"),
            ("finaldot_configure", "(u32, u32) -> u64"),
            ("finaldot_on_message", "(u32, u32) -> u64"),
        ] {
            if inst.get_func(&mut store, name).is_none() {
                return Err(Fault::MissingExport(format!("{name}: {sig}")));
            }
        }
        let memory = inst
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Fault::MissingExport("memory".into()))?;
        let packed = inst
            .get_typed_func::<(), u64>(&mut store, "finaldot_info")
            .map_err(|_| Fault::MissingExport("finaldot_info: () -> u64".into()))?
            .call(&mut store, ())
            .map_err(|e| Fault::Trap(format!("finaldot_info: {e:#}")))?;
        let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let bytes = memory.data(&store).get(ptr..ptr + len).ok_or_else(|| {
            Fault::MalformedOutput("finaldot_info returned an out-of-bounds buffer".into())
        })?;
        match PluginInfo::decode(bytes) {
            Ok(GuestResult::Ok(info)) => {
                let missing = info.missing(finaldot_sdk::wire::FEATURES);
                if !missing.is_empty() {
                    return Err(Fault::NeedsFeatures(
                        missing.into_iter().map(String::from).collect(),
                    ));
                }
                Ok(info)
            }
            Ok(GuestResult::Err(e)) => Err(Fault::Guest(e)),
            Err(e) => Err(Fault::MalformedOutput(format!("finaldot_info: {e}"))),
        }
    }
}

/// A compiled, checked plugin module.
pub struct LoadedModule {
    /// "name version #hash12", made once (every call logs it).
    label: String,
    module: Module,
    pre: InstancePre<instance::HostState>,
    gate: Arc<CpuGate>,
    /// The file it came from.
    pub file: PathBuf,
    /// SHA-256 of the wasm bytes, hex.
    pub hash: String,
    /// What the plugin says it is.
    pub info: PluginInfo,
    /// Its exports.
    pub exports: Vec<String>,
    /// Its imports (all `finaldot::…`).
    pub imports: Vec<String>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// Time to compile (or load from the cache) and check it.
    pub compile_time: Duration,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("file", &self.file)
            .field("hash", &self.hash)
            .field("info", &self.info)
            .finish()
    }
}

impl LoadedModule {
    /// "name version #hash12", used in logs and errors.
    pub fn version_label(&self) -> String {
        self.label.clone()
    }
}

/// How a plugin is configured: its module, settings, limits and grants.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// Its name in the configuration (logs, errors, `queue show`).
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// Its settings table.
    pub config: Value,
    /// Per-call limits.
    pub limits: Limits,
    /// What it may touch.
    pub grants: Grants,
    /// Keep instances between messages (for plugins with costly setup);
    /// an instance is thrown away after any fault.
    pub reuse_instance: bool,
    /// The copy carried in the binary that serves while `file` does not exist.
    pub builtin: Option<&'static builtin::Builtin>,
}

/// Call statistics of one plugin.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that faulted.
    pub faults: AtomicU64,
}

/// A configured plugin, ready to be called for messages.
pub struct Plugin {
    spec: PluginSpec,
    module: Arc<LoadedModule>,
    grants: Arc<OpenGrants>,
    idle: Mutex<Vec<PluginInstance>>,
    /// `finaldot_configure`'s input, encoded once for every instance.
    configure_input: Vec<u8>,
    /// Call statistics.
    pub stats: PluginStats,
}

/// The result of one call: the plugin's output, and its log lines if captured.
#[derive(Debug)]
pub struct CallResult {
    /// What the plugin returned.
    pub output: MessageOutput,
    /// Log lines, when the call captured them.
    pub logs: Vec<LogLine>,
    /// The version label of the module that ran.
    pub version: String,
    /// Time for the whole call (instantiate, configure, encode, call, decode).
    pub elapsed: Duration,
}

impl Plugin {
    /// Loads the module, opens the grants, and checks that the plugin accepts
    /// its configuration (one trial instance).
    pub fn new(runtime: &Runtime, spec: PluginSpec) -> Result<Plugin, PluginError> {
        let module = runtime.load(&spec.file).map_err(|mut e| {
            e.plugin = spec.name.clone();
            e
        })?;
        Plugin::with_module(module, spec)
    }

    /// Like [`Plugin::new`], with a module already loaded and checked.
    pub fn with_module(module: Arc<LoadedModule>, spec: PluginSpec) -> Result<Plugin, PluginError> {
        let grants = OpenGrants::open(&spec.grants).map_err(|e| {
            PluginError::new(
                &spec.name,
                &module.version_label(),
                Fault::Io(e.to_string()),
            )
        })?;
        let configure_input = postcard::to_allocvec(&finaldot_sdk::wire::ConfigureInput {
            abi: finaldot_sdk::wire::ABI_VERSION,
            name: spec.name.clone(),
            config: spec.config.clone(),
        })
        .map_err(|e| {
            PluginError::new(
                &spec.name,
                &module.version_label(),
                Fault::MalformedOutput(format!("encoding config: {e}")),
            )
        })?;
        let plugin = Plugin {
            module,
            grants: Arc::new(grants),
            idle: Mutex::new(Vec::new()),
            configure_input,
            stats: PluginStats::default(),
            spec,
        };
        let trial = plugin.instance(false)?;
        if plugin.spec.reuse_instance {
            plugin.give_back(trial);
        }
        Ok(plugin)
    }

    /// The plugin's spec.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The module currently in use.
    pub fn module(&self) -> Arc<LoadedModule> {
        self.module.clone()
    }

    fn instance(&self, capture_logs: bool) -> Result<PluginInstance, PluginError> {
        if self.spec.reuse_instance && !capture_logs {
            if let Ok(mut idle) = self.idle.lock() {
                let module = self.module();
                while let Some(inst) = idle.pop() {
                    if Arc::ptr_eq(inst.module(), &module) {
                        return Ok(inst);
                    }
                }
            }
        }
        PluginInstance::new(
            self.module(),
            &self.spec.name,
            &self.configure_input,
            self.spec.limits,
            self.grants.clone(),
            capture_logs,
        )
    }

    fn give_back(&self, inst: PluginInstance) {
        if self.spec.reuse_instance && !inst.poisoned {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < 16 {
                    idle.push(inst);
                }
            }
        }
    }

    /// Runs the plugin on one message. `capture_logs` keeps its log lines in
    /// the result (for `finaldot plugin test`).
    pub fn call(
        &self,
        input: &MessageInput,
        body: Body,
        capture_logs: bool,
    ) -> Result<CallResult, PluginError> {
        // The call's time includes the wait for a CPU slot (as before).
        let started = Instant::now();
        let gate = self.module.gate.clone();
        let _slot = gate.enter();
        let (output, logs, version, _) =
            self.with_instance(capture_logs, |inst| inst.on_message(input, body))?;
        Ok(CallResult {
            output,
            logs,
            version,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `call` on an instance (reused or new), counting the call and
    /// its fault: what it returned, the log lines captured, the module's
    /// version label and the time the whole call took.
    fn with_instance<T>(
        &self,
        capture_logs: bool,
        call: impl FnOnce(&mut PluginInstance) -> Result<T, PluginError>,
    ) -> Result<(T, Vec<LogLine>, String, Duration), PluginError> {
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = (|| {
            let mut inst = self.instance(capture_logs)?;
            let version = inst.module().version_label();
            let out = call(&mut inst)?;
            let logs = inst.take_logs();
            self.give_back(inst);
            Ok((out, logs, version, started.elapsed()))
        })();
        if result.is_err() {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Whether the module can judge at the door (exports `finaldot_on_door`).
    pub fn has_door(&self) -> bool {
        self.module.exports.iter().any(|e| e == "finaldot_on_door")
    }

    /// Runs the plugin at one door stage; `session` names the connection in
    /// its log lines; `capture_logs` keeps them in the result (for
    /// `finaldot plugin test`). Blocking: call it off the network runtime.
    /// A door call does not take a slot of the CPU gate: a client is
    /// waiting for it, and it must not queue behind the pipeline's plugins
    /// (the SMTP side bounds how many run at once).
    pub fn call_door(
        &self,
        input: &DoorInput,
        session: &str,
        capture_logs: bool,
    ) -> Result<DoorCall, PluginError> {
        let (verdict, logs, version, elapsed) =
            self.with_instance(capture_logs, |inst| inst.on_door(input, session))?;
        Ok(DoorCall {
            verdict,
            logs,
            version,
            elapsed,
        })
    }
}

/// The result of one door call.
#[derive(Debug)]
pub struct DoorCall {
    /// What the plugin decided (valid to send).
    pub verdict: DoorVerdict,
    /// Log lines, when the call captured them.
    pub logs: Vec<LogLine>,
    /// The version label of the module that ran.
    pub version: String,
    /// Time for the whole call.
    pub elapsed: Duration,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
