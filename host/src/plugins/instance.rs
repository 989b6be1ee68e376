//! One plugin instance: its store (limits, epoch deadline, capabilities), the
//! host functions it imports, and the ABI v1 calls into it.
//!
//! SECURITY: everything a plugin returns is hostile. Pointers and lengths are
//! bounds-checked against its memory; outputs are decoded with postcard into
//! the SDK's types (malformed output is an error, never a panic); host
//! functions never block on anything but the granted files; a trap, a timeout
//! or a memory-limit hit ends the call with an error and the instance is
//! thrown away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use finaldot_sdk::wire::{
    DoorInput, DoorOutput, DoorVerdict, GuestResult, HostRequest, Level, MessageInput,
    MessageOutput, PluginInfo, ABI_VERSION,
};
use wasmtime::{Caller, Linker, Memory, Store, TypedFunc};

pub use super::call::Body;
use super::call::CallBudget;
use super::caps::OpenGrants;
use super::{Fault, Limits, LoadedModule, PluginError, EPOCH_TICK};

/// A line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: String,
}

/// What the store of one instance carries.
pub struct HostState {
    limiter: Limiter,
    plugin: String,
    version: String,
    queue_id: String,
    body: Body,
    grants: Arc<OpenGrants>,
    gate: Option<Arc<super::CpuGate>>,
    panic: Option<String>,
    capture_logs: bool,
    logs: Vec<LogLine>,
    /// DNS lookups made for the current message (the grant's budget).
    dns_used: u32,
    /// When the current call runs out of time: a DNS wait never outlasts
    /// it (the plugin gets a Timeout answer instead of being killed).
    deadline: Option<Instant>,
    /// The first service the current call needed that could not answer.
    unavailable: Option<String>,
}

impl HostState {
    /// State for a probe instance: nothing granted, nothing captured.
    pub(crate) fn probe(limits: Limits) -> HostState {
        HostState {
            limiter: Limiter {
                memory: limits.memory,
                hit: false,
            },
            plugin: String::new(),
            version: String::new(),
            queue_id: String::new(),
            body: Body::empty(),
            grants: Arc::new(OpenGrants::none()),
            gate: None,
            panic: None,
            capture_logs: false,
            logs: Vec::new(),
            dns_used: 0,
            deadline: None,
            unavailable: None,
        }
    }

    /// The store's resource limiter.
    pub(crate) fn limiter(&mut self) -> &mut dyn wasmtime::ResourceLimiter {
        &mut self.limiter
    }
}

struct Limiter {
    memory: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached",
                self.memory
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::Error::msg("plugin exports no memory"))
}

fn read_guest(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let data = mem.data(&caller);
    let (start, end) = (ptr as usize, ptr as usize + len as usize);
    data.get(start..end)
        .map(|s| s.to_vec())
        .ok_or_else(|| wasmtime::Error::msg("plugin passed an out-of-bounds buffer"))
}

/// Copies `bytes` into a buffer the guest allocates; returns the packed (ptr, len).
fn write_guest(caller: &mut Caller<'_, HostState>, bytes: &[u8]) -> wasmtime::Result<u64> {
    let alloc = caller
        .get_export("finaldot_alloc")
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::Error::msg("plugin exports no finaldot_alloc"))?
        .typed::<u32, u32>(&caller)?;
    let len = u32::try_from(bytes.len()).map_err(|_| wasmtime::Error::msg("response too large"))?;
    let ptr = alloc.call(&mut *caller, len)?;
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as usize, bytes)
        .map_err(|_| wasmtime::Error::msg("plugin allocated an out-of-bounds buffer"))?;
    Ok((u64::from(ptr) << 32) | u64::from(len))
}

/// Defines finaldot's host functions: the only imports a plugin may have.
// Long on purpose: one registration per host function, the whole import surface in one place.
pub fn define_host_functions(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "finaldot",
        "log",
        |mut caller: Caller<'_, HostState>,
         level: u32,
         ptr: u32,
         len: u32|
         -> wasmtime::Result<()> {
            let bytes = read_guest(&mut caller, ptr, len.min(64 * 1024))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let level = Level::from_u32(level);
            let s = caller.data_mut();
            let (plugin, version, queue_id) = (&s.plugin, &s.version, &s.queue_id);
            // A plugin's text may quote a client's (an address, a header).
            let shown = crate::Printable(&text);
            match level {
                Level::Error => tracing::error!(%plugin, %version, %queue_id, "{shown}"),
                Level::Warn => tracing::warn!(%plugin, %version, %queue_id, "{shown}"),
                Level::Info => tracing::info!(%plugin, %version, %queue_id, "{shown}"),
                _ => tracing::debug!(%plugin, %version, %queue_id, "{shown}"),
            }
            if s.capture_logs && s.logs.len() < 10_000 {
                s.logs.push(LogLine { level, text });
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        "finaldot",
        "panic",
        |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<()> {
            let bytes = read_guest(&mut caller, ptr, len.min(64 * 1024))?;
            caller.data_mut().panic = Some(String::from_utf8_lossy(&bytes).into_owned());
            Ok(())
        },
    )?;
    linker.func_wrap(
        "finaldot",
        "body_read",
        |mut caller: Caller<'_, HostState>,
         offset: u64,
         ptr: u32,
         len: u32|
         -> wasmtime::Result<i64> {
            let mem = memory(&mut caller)?;
            let body = caller.data().body.clone();
            let want = (len as usize).min(4 * 1024 * 1024);
            let (data, _) = mem.data_and_store_mut(&mut caller);
            let dst = data
                .get_mut(ptr as usize..ptr as usize + want)
                .ok_or_else(|| wasmtime::Error::msg("plugin passed an out-of-bounds buffer"))?;
            Ok(match body.read_at(offset, dst) {
                Ok(n) => n as i64,
                Err(_) => -1,
            })
        },
    )?;
    linker.func_wrap("finaldot", "now_ms", || -> u64 { crate::unix_now_ms() })?;
    linker.func_wrap(
        "finaldot",
        "call",
        |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<u64> {
            if len > 64 * 1024 * 1024 {
                return Err(wasmtime::Error::msg("host request larger than 64 MiB"));
            }
            let bytes = read_guest(&mut caller, ptr, len)?;
            let response = match postcard::from_bytes::<HostRequest>(&bytes) {
                Ok(req) => {
                    let s = caller.data_mut();
                    // A durable write waits on the disk, a DNS lookup on the
                    // network: neither needs the plugin's CPU slot, so it is
                    // given back for the duration and taken again before
                    // returning. Quick requests (a kv read, a read from the
                    // page cache) keep it: giving it back would queue this
                    // call behind other plugins' work for each one.
                    let gate = s.gate.clone();
                    let _paused = gate
                        .as_deref()
                        .filter(|_| s.grants.waits(&req))
                        .map(super::CpuGate::pause);
                    let budget = CallBudget {
                        dns_used: &mut s.dns_used,
                        deadline: s.deadline,
                        unavailable: &mut s.unavailable,
                    };
                    s.grants.handle(&req, &s.body, crate::unix_now(), budget)
                }
                Err(e) => finaldot_sdk::wire::HostResponse::Error {
                    kind: finaldot_sdk::wire::HostErrorKind::Invalid,
                    message: format!("request does not decode: {e}"),
                },
            };
            let out = postcard::to_allocvec(&response)?;
            write_guest(&mut caller, &out)
        },
    )?;
    Ok(())
}

/// A live instance of a plugin, configured and ready for messages.
pub struct PluginInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    dealloc: TypedFunc<(u32, u32), ()>,
    on_message: TypedFunc<(u32, u32), u64>,
    /// `finaldot_on_door`, in a module built with door stages.
    on_door: Option<TypedFunc<(u32, u32), u64>>,
    limits: Limits,
    module: Arc<LoadedModule>,
    /// Set after any fault: the instance must not be used again.
    pub poisoned: bool,
}

impl PluginInstance {
    /// Instantiates `module` with `grants` and runs `finaldot_configure`
    /// with `configure_input` (an encoded `ConfigureInput`).
    // Long on purpose: a store with its limits, grants and epoch deadline, then the configure call, in the order wasmtime needs them.
    pub fn new(
        module: Arc<LoadedModule>,
        name: &str,
        configure_input: &[u8],
        limits: Limits,
        grants: Arc<OpenGrants>,
        capture_logs: bool,
    ) -> Result<PluginInstance, PluginError> {
        let engine = module.module.engine();
        let mut store = Store::new(
            engine,
            HostState {
                limiter: Limiter {
                    memory: limits.memory,
                    hit: false,
                },
                plugin: name.to_string(),
                version: module.version_label(),
                queue_id: String::new(),
                body: Body::empty(),
                grants,
                gate: Some(module.gate.clone()),
                panic: None,
                capture_logs,
                logs: Vec::new(),
                dns_used: 0,
                deadline: None,
                unavailable: None,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(limits.timeout));
        let started = Instant::now();
        let err = |store: &Store<HostState>, e: wasmtime::Error| {
            PluginError::new(
                name,
                &module.version_label(),
                classify(store, e, limits, started),
            )
        };
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| err(&store, e))?;
        let get = |store: &mut Store<HostState>, n: &str| {
            instance.get_func(&mut *store, n).ok_or_else(|| {
                PluginError::new(
                    name,
                    &module.version_label(),
                    Fault::MissingExport(n.to_string()),
                )
            })
        };
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| {
            PluginError::new(
                name,
                &module.version_label(),
                Fault::MissingExport("memory".into()),
            )
        })?;
        let bad_sig = |n: &str, e: wasmtime::Error| {
            PluginError::new(
                name,
                &module.version_label(),
                Fault::MissingExport(format!("{n} (wrong signature: {e})")),
            )
        };
        let alloc = get(&mut store, "finaldot_alloc")?
            .typed::<u32, u32>(&store)
            .map_err(|e| bad_sig("finaldot_alloc", e))?;
        let dealloc = get(&mut store, "finaldot_dealloc")?
            .typed::<(u32, u32), ()>(&store)
            .map_err(|e| bad_sig("finaldot_dealloc", e))?;
        let configure = get(&mut store, "finaldot_configure")?
            .typed::<(u32, u32), u64>(&store)
            .map_err(|e| bad_sig("finaldot_configure", e))?;
        let on_message = get(&mut store, "finaldot_on_message")?
            .typed::<(u32, u32), u64>(&store)
            .map_err(|e| bad_sig("finaldot_on_message", e))?;
        let on_door = match instance.get_func(&mut store, "finaldot_on_door") {
            None => None,
            Some(f) => Some(
                f.typed::<(u32, u32), u64>(&store)
                    .map_err(|e| bad_sig("finaldot_on_door", e))?,
            ),
        };
        let mut inst = PluginInstance {
            store,
            memory,
            alloc,
            dealloc,
            on_message,
            on_door,
            limits,
            module: module.clone(),
            poisoned: false,
        };
        // Any SDK's info: one older than `needs` encodes less.
        let out = inst.call(configure, configure_input, PluginInfo::decode)?;
        match out {
            GuestResult::Ok(info) if info.abi == ABI_VERSION => Ok(inst),
            GuestResult::Ok(info) => Err(inst.error(Fault::AbiMismatch {
                found: info.abi,
                supported: ABI_VERSION,
            })),
            GuestResult::Err(e) => Err(inst.error(Fault::Configure(e))),
        }
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    fn error(&self, fault: Fault) -> PluginError {
        PluginError::new(
            &self.store.data().plugin,
            &self.module.version_label(),
            fault,
        )
    }

    /// The lines logged so far (when capturing).
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Calls an ABI entry point with `input`, decoding its packed output
    /// with `decode`.
    fn call<T>(
        &mut self,
        f: TypedFunc<(u32, u32), u64>,
        input: &[u8],
        decode: fn(&[u8]) -> Result<T, postcard::Error>,
    ) -> Result<T, PluginError> {
        let started = Instant::now();
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout));
        self.store.data_mut().deadline = Some(started + self.limits.timeout);
        let result = self.call_inner(f, input, decode);
        match result {
            Ok(v) => Ok(v),
            Err(fault) => {
                self.poisoned = true;
                let fault = match fault {
                    CallFault::Wasm(e) => classify(&self.store, e, self.limits, started),
                    CallFault::Fault(f) => f,
                };
                Err(self.error(fault))
            }
        }
    }

    fn call_inner<T>(
        &mut self,
        f: TypedFunc<(u32, u32), u64>,
        input: &[u8],
        decode: fn(&[u8]) -> Result<T, postcard::Error>,
    ) -> Result<T, CallFault> {
        let len = u32::try_from(input.len()).map_err(|_| {
            CallFault::Fault(Fault::MalformedOutput("input larger than 4 GiB".into()))
        })?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(CallFault::Wasm)?;
        self.memory
            .write(&mut self.store, ptr as usize, input)
            .map_err(|_| {
                CallFault::Fault(Fault::MalformedOutput(
                    "finaldot_alloc returned an out-of-bounds buffer".into(),
                ))
            })?;
        let packed = f
            .call(&mut self.store, (ptr, len))
            .map_err(CallFault::Wasm)?;
        let (out_ptr, out_len) = ((packed >> 32) as u32, (packed & 0xffff_ffff) as u32);
        let data = self.memory.data(&self.store);
        let bytes = data
            .get(out_ptr as usize..out_ptr as usize + out_len as usize)
            .ok_or_else(|| {
                CallFault::Fault(Fault::MalformedOutput(format!(
                    "output buffer {out_ptr}+{out_len} is outside the plugin's memory"
                )))
            })?;
        let decoded = decode(bytes).map_err(|e| {
            CallFault::Fault(Fault::MalformedOutput(format!(
                "output does not decode: {e}"
            )))
        })?;
        if out_len > 0 {
            self.dealloc
                .call(&mut self.store, (out_ptr, out_len))
                .map_err(CallFault::Wasm)?;
        }
        Ok(decoded)
    }

    /// Runs `on_message`. The instance is poisoned after any fault. A call
    /// that fails after a service it asked could not answer (a remote
    /// key-value store) is [`Fault::Unavailable`], whatever the plugin made
    /// of the error: the message waits for the service.
    pub fn on_message(
        &mut self,
        input: &MessageInput,
        body: Body,
    ) -> Result<MessageOutput, PluginError> {
        let result = self.on_message_inner(input, body);
        self.unless_unavailable(result)
    }

    /// `result`, except that a failure after a service the plugin asked
    /// could not answer is that service's [`Fault::Unavailable`].
    fn unless_unavailable<T>(&mut self, result: Result<T, PluginError>) -> Result<T, PluginError> {
        let unavailable = self.store.data_mut().unavailable.take();
        match (result, unavailable) {
            (Err(mut e), Some(why)) => {
                e.fault = Fault::Unavailable(why);
                Err(e)
            }
            (result, _) => result,
        }
    }

    fn on_message_inner(
        &mut self,
        input: &MessageInput,
        body: Body,
    ) -> Result<MessageOutput, PluginError> {
        if self.poisoned {
            return Err(self.error(Fault::Trap(
                "instance was poisoned by an earlier fault".into(),
            )));
        }
        {
            let s = self.store.data_mut();
            s.queue_id = input.queue_id.clone();
            s.dns_used = 0;
            s.unavailable = None;
            s.body = body;
            s.panic = None;
        }
        let bytes = postcard::to_allocvec(input)
            .map_err(|e| self.error(Fault::MalformedOutput(format!("encoding input: {e}"))))?;
        let out: GuestResult<MessageOutput> =
            self.call(self.on_message.clone(), &bytes, |b| postcard::from_bytes(b))?;
        self.store.data_mut().body = Body::empty();
        match out {
            GuestResult::Ok(o) if o.abi == ABI_VERSION => Ok(o),
            GuestResult::Ok(o) => Err(self.error(Fault::AbiMismatch {
                found: o.abi,
                supported: ABI_VERSION,
            })),
            GuestResult::Err(e) => Err(self.error(Fault::Guest(e))),
        }
    }
}

impl PluginInstance {
    /// Runs `on_door` for one door stage; `session` names the connection in
    /// the plugin's log lines. Poisoned after any fault, as `on_message`.
    pub fn on_door(
        &mut self,
        input: &DoorInput,
        session: &str,
    ) -> Result<DoorVerdict, PluginError> {
        let result = self.on_door_inner(input, session);
        self.unless_unavailable(result)
    }

    fn on_door_inner(
        &mut self,
        input: &DoorInput,
        session: &str,
    ) -> Result<DoorVerdict, PluginError> {
        if self.poisoned {
            return Err(self.error(Fault::Trap(
                "instance was poisoned by an earlier fault".into(),
            )));
        }
        let Some(on_door) = self.on_door.clone() else {
            return Err(self.error(Fault::MissingExport(
                "finaldot_on_door (built with an SDK without door stages)".into(),
            )));
        };
        {
            let s = self.store.data_mut();
            // Not on the CPU gate (see Plugin::call_door): nothing to lend
            // out while a host request waits.
            s.gate = None;
            s.queue_id = session.to_string();
            s.dns_used = 0;
            s.unavailable = None;
            s.body = Body::empty();
            s.panic = None;
        }
        let bytes = postcard::to_allocvec(input)
            .map_err(|e| self.error(Fault::MalformedOutput(format!("encoding input: {e}"))))?;
        let out: GuestResult<DoorOutput> =
            self.call(on_door, &bytes, |b| postcard::from_bytes(b))?;
        match out {
            GuestResult::Ok(o) if o.abi == ABI_VERSION => match o.verdict.invalid() {
                None => Ok(o.verdict),
                Some(why) => {
                    self.poisoned = true;
                    Err(self.error(Fault::MalformedOutput(format!("door reply refused: {why}"))))
                }
            },
            GuestResult::Ok(o) => Err(self.error(Fault::AbiMismatch {
                found: o.abi,
                supported: ABI_VERSION,
            })),
            GuestResult::Err(e) => Err(self.error(Fault::Guest(e))),
        }
    }
}

enum CallFault {
    Wasm(wasmtime::Error),
    Fault(Fault),
}

/// Ticks of the epoch clock for a time limit (at least 2, so a deadline is
/// never hit by the tick that is already in progress).
fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// Turns a wasmtime error into a fault, using what the store saw.
fn classify(
    store: &Store<HostState>,
    e: wasmtime::Error,
    limits: Limits,
    started: Instant,
) -> Fault {
    let s = store.data();
    if s.limiter.hit {
        return Fault::MemoryLimit(limits.memory);
    }
    if let Some(msg) = &s.panic {
        return Fault::Panic(msg.clone());
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Fault::Timeout {
            limit: limits.timeout,
            after: started.elapsed(),
        },
        Some(wasmtime::Trap::StackOverflow) => Fault::StackOverflow,
        Some(t) => Fault::Trap(t.to_string()),
        None => Fault::Trap(format!("{e:#}")),
    }
}
