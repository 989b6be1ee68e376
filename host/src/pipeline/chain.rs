//! The plugin chain and its hot reload.
//!
//! A [`Stage`] holds the plugin currently serving it behind a lock that is
//! taken only to clone an `Arc`: a message already inside a plugin finishes
//! with the version it started with, the next call gets whatever is current.
//! The [`Reloader`] watches the plugin directory (notify) and, as the
//! backstop for lost events, rescans it; a changed file is compiled and
//! checked (ABI version, exports, a trial `on_configure`) off the pipeline's
//! hot path, and only a module that passes replaces the running one. A broken
//! or half-written file leaves the running version in place and logs why; a
//! removed file makes its stage defer messages (they wait, never skipped)
//! until the file is back, unless the binary carries a built-in copy of it
//! ([`crate::plugins::builtin`]), which then serves again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::plugins::{Plugin, PluginSpec, Runtime};

/// One stage of the chain.
pub struct Stage {
    /// How it is configured.
    pub spec: PluginSpec,
    plugin: RwLock<Result<Arc<Plugin>, String>>,
    /// Whether the serving version is the binary's built-in copy (no file).
    builtin: AtomicBool,
    /// Hash of the last file refused, so a broken file is reported once.
    refused: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.spec.name)
            .finish()
    }
}

/// Where a stage's module comes from: its file, or the built-in copy when
/// the file does not exist.
enum Source {
    File(Vec<u8>),
    Builtin(&'static [u8]),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::File(b) => b,
            Source::Builtin(b) => b,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Builtin(_) => "built-in",
        }
    }
}

impl Stage {
    /// Loads the stage's plugin; a failure leaves the stage unavailable (its
    /// messages wait) and is logged.
    pub fn load(runtime: &Runtime, spec: PluginSpec) -> Stage {
        let stage = Stage {
            spec,
            plugin: RwLock::new(Err("not loaded yet".into())),
            builtin: AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
        };
        let spec = &stage.spec;
        let loaded = stage
            .source()
            .map_err(|e| format!("cannot read {}: {e}", spec.file.display()))
            .and_then(|source| {
                let p = runtime
                    .load_bytes(source.bytes(), &spec.file)
                    .and_then(|m| Plugin::with_module(m, spec.clone()))
                    .map_err(|mut e| {
                        e.plugin = spec.name.clone();
                        e.to_string()
                    })?;
                Ok((p, source))
            });
        match loaded {
            Ok((p, source)) => {
                let m = p.module();
                info!(
                    plugin = %spec.name,
                    version = %m.version_label(),
                    file = %spec.file.display(),
                    source = source.label(),
                    cached = m.from_cache,
                    compile_ms = m.compile_time.as_secs_f64() * 1000.0,
                    "plugin loaded"
                );
                stage.set(Ok(Arc::new(p)), matches!(source, Source::Builtin(_)));
            }
            Err(e) => {
                warn!(plugin = %spec.name, file = %spec.file.display(), error = %e, "plugin not available: its stage defers messages until it loads");
                stage.set(Err(e), false);
            }
        }
        stage
    }

    /// The plugin serving this stage now, or why there is none.
    pub fn current(&self) -> Result<Arc<Plugin>, String> {
        crate::read_clone(&self.plugin)
    }

    /// Whether the serving version is the binary's built-in copy.
    pub fn is_builtin(&self) -> bool {
        self.builtin.load(Ordering::Relaxed)
    }

    fn set(&self, value: Result<Arc<Plugin>, String>, builtin: bool) {
        match self.plugin.write() {
            Ok(mut p) => *p = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
        self.builtin.store(builtin, Ordering::Relaxed);
    }

    /// The stage's file, or its built-in copy when the file does not exist.
    fn source(&self) -> std::io::Result<Source> {
        match std::fs::read(&self.spec.file) {
            Ok(b) => Ok(Source::File(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.spec.builtin {
                Some(b) => Ok(Source::Builtin(b.wasm)),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Re-reads the stage's file (or, without one, its built-in copy):
    /// installs a new version only if it differs and passes every check.
    /// Returns true when the serving plugin changed.
    pub fn reload(&self, runtime: &Runtime) -> bool {
        let file = &self.spec.file;
        let name = &self.spec.name;
        let source = match self.source() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.current().is_ok() {
                    warn!(plugin = %name, file = %file.display(), "plugin file removed: its stage defers messages until the file is back");
                    self.set(
                        Err(format!("plugin file {} was removed", file.display())),
                        false,
                    );
                    return true;
                }
                return false;
            }
            Err(e) => {
                error!(plugin = %name, file = %file.display(), error = %e, "cannot read plugin file; keeping the running version");
                return false;
            }
        };
        let builtin = matches!(source, Source::Builtin(_));
        let hash = crate::plugins::content_hash(source.bytes());
        if let Ok(p) = self.current() {
            if p.module().hash == hash {
                // The same module; only where it comes from may have changed
                // (a file identical to the built-in copy put or removed).
                return self.builtin.swap(builtin, Ordering::Relaxed) != builtin;
            }
        }
        if self
            .refused
            .lock()
            .map(|r| r.as_deref() == Some(hash.as_str()))
            .unwrap_or(false)
        {
            // The file is gone and the built-in copy does not load here: the
            // removed file's version must not go on serving as if present.
            if builtin && self.current().is_ok() && !self.is_builtin() {
                warn!(plugin = %name, file = %file.display(), "plugin file removed and the built-in copy was refused: its stage defers messages until the file is back");
                self.set(
                    Err(format!("plugin file {} was removed", file.display())),
                    false,
                );
                return true;
            }
            return false;
        }
        let started = Instant::now();
        let loaded = runtime
            .load_bytes(source.bytes(), file)
            .and_then(|m| Plugin::with_module(m, self.spec.clone()));
        match loaded {
            Ok(p) => {
                let m = p.module();
                info!(
                    plugin = %name,
                    version = %m.version_label(),
                    file = %file.display(),
                    source = source.label(),
                    cached = m.from_cache,
                    load_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "plugin reloaded"
                );
                self.set(Ok(Arc::new(p)), builtin);
                true
            }
            Err(e) => {
                error!(plugin = %name, file = %file.display(), source = source.label(), error = %e, "new plugin version refused; keeping the running version");
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(hash);
                }
                false
            }
        }
    }
}

/// Loads every configured stage.
pub fn load_chain(runtime: &Runtime, specs: &[PluginSpec]) -> Vec<Arc<Stage>> {
    specs
        .iter()
        .map(|spec| Arc::new(Stage::load(runtime, spec.clone())))
        .collect()
}

/// One plugin in the status file (`finaldot plugin list`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PluginStatus {
    /// Its name in the configuration.
    pub name: String,
    /// Its file.
    pub file: String,
    /// Whether a version is loaded and serving.
    pub loaded: bool,
    /// The module's crate name and version.
    pub version: Option<String>,
    /// The ABI version it speaks.
    pub abi: Option<u32>,
    /// SHA-256 of the `.wasm`.
    pub hash: Option<String>,
    /// When this version was loaded (seconds since the epoch).
    pub loaded_at: Option<u64>,
    /// Calls to this version.
    pub calls: u64,
    /// Faults of this version.
    pub faults: u64,
    /// Why it is not loaded.
    pub error: Option<String>,
    /// Where the serving version came from: `file`, or `built-in` (the
    /// binary's own copy, serving while the file does not exist).
    #[serde(default)]
    pub source: Option<String>,
}

/// The status of every stage.
pub fn status(stages: &[Arc<Stage>]) -> Vec<PluginStatus> {
    stages
        .iter()
        .map(|s| match s.current() {
            Ok(p) => {
                let m = p.module();
                PluginStatus {
                    name: s.spec.name.clone(),
                    file: s.spec.file.display().to_string(),
                    loaded: true,
                    version: Some(format!("{} {}", m.info.name, m.info.version)),
                    abi: Some(m.info.abi),
                    hash: Some(m.hash.clone()),
                    loaded_at: m
                        .loaded_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs()),
                    calls: p.stats.calls.load(Ordering::Relaxed),
                    faults: p.stats.faults.load(Ordering::Relaxed),
                    error: None,
                    source: Some(if s.is_builtin() { "built-in" } else { "file" }.into()),
                }
            }
            Err(e) => PluginStatus {
                name: s.spec.name.clone(),
                file: s.spec.file.display().to_string(),
                loaded: false,
                version: None,
                abi: None,
                hash: None,
                loaded_at: None,
                calls: 0,
                faults: 0,
                error: Some(e),
                source: None,
            },
        })
        .collect()
}

/// Writes the status file atomically.
pub fn write_status(path: &Path, stages: &[Arc<Stage>]) {
    let Ok(json) = serde_json::to_vec_pretty(&status(stages)) else {
        return;
    };
    let tmp = path.with_extension("json.tmp");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Where the status file lives under the data directory.
pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("status").join("plugins.json")
}

/// The chain currently in force (replaced whole on a configuration reload).
pub type SharedChain = Arc<RwLock<Arc<Vec<Arc<Stage>>>>>;

/// Reads the chain in force.
pub fn snapshot(chain: &SharedChain) -> Arc<Vec<Arc<Stage>>> {
    crate::read_clone(chain)
}

/// Where the reloader finds stages to watch: the chain, the door plugins.
pub type StageList = Box<dyn Fn() -> Vec<Arc<Stage>> + Send>;

/// The stages of a shared chain, as a [`StageList`].
pub fn chain_stages(chain: &SharedChain) -> StageList {
    let chain = chain.clone();
    Box::new(move || snapshot(&chain).to_vec())
}

/// Watches the plugin directory and reloads changed plugins.
pub struct Reloader {
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reloader {
    /// Starts watching `dir` for the stages of `lists` (each asked again
    /// at every look, so a reload's new stages are watched); rescans every
    /// `rescan`.
    pub fn start(
        runtime: Arc<Runtime>,
        lists: Vec<StageList>,
        dir: PathBuf,
        rescan: Duration,
        status_file: PathBuf,
    ) -> std::io::Result<Reloader> {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (ev_tx, ev_rx) = mpsc::channel::<PathBuf>();
        let _ = std::fs::create_dir_all(&dir);
        let thread = std::thread::Builder::new()
            .name("plugin-reload".into())
            .spawn(move || {
                let tx = ev_tx.clone();
                let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    if let Ok(ev) = res {
                        let relevant = matches!(
                            ev.kind,
                            EventKind::Create(_)
                                | EventKind::Remove(_)
                                | EventKind::Modify(notify::event::ModifyKind::Name(_))
                                | EventKind::Access(notify::event::AccessKind::Close(
                                    notify::event::AccessMode::Write
                                ))
                        );
                        if relevant {
                            for p in ev.paths {
                                let _ = tx.send(p);
                            }
                        }
                    }
                });
                let _watcher = match watcher {
                    Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => Some(w),
                        Err(e) => {
                            warn!(dir = %dir.display(), error = %e, "cannot watch the plugin directory; relying on the periodic rescan");
                            None
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "no filesystem watcher; relying on the periodic rescan");
                        None
                    }
                };
                reload_loop(&runtime, &lists, ev_rx, stop_rx, rescan, &status_file);
            })?;
        Ok(Reloader {
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn file_stamp(p: &Path) -> Option<(u64, SystemTime)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

fn reload_loop(
    runtime: &Runtime,
    lists: &[StageList],
    events: mpsc::Receiver<PathBuf>,
    stop: mpsc::Receiver<()>,
    rescan: Duration,
    status_file: &Path,
) {
    // Empty at first: the first scan (at once) compares every file with the
    // version the stage loaded (by content hash), so a change made between
    // the load and the start of the watch is not missed.
    let mut stamps: HashMap<PathBuf, Option<(u64, SystemTime)>> = HashMap::new();
    let all = || -> Vec<Arc<Stage>> { lists.iter().flat_map(|list| list()).collect() };
    write_status(status_file, &all());
    let mut last_scan: Option<Instant> = None;
    let mut last_status = Instant::now();
    loop {
        if stop.try_recv().is_ok() {
            return;
        }
        let mut changed: Vec<PathBuf> = Vec::new();
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(p) => {
                changed.push(p);
                // Debounce: gather what arrives in the next few milliseconds.
                while let Ok(p) = events.recv_timeout(Duration::from_millis(3)) {
                    changed.push(p);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let stages = all();
        if last_scan.is_none_or(|t| t.elapsed() >= rescan) {
            last_scan = Some(Instant::now());
            for s in stages.iter() {
                let now = file_stamp(&s.spec.file);
                let before = stamps.get(&s.spec.file);
                let serving = s.current().is_ok();
                let should_serve = now.is_some() || s.spec.builtin.is_some();
                // A change since last look (or a first look), or a stage whose
                // state disagrees with its file (events can be lost).
                if before != Some(&now) || should_serve != serving {
                    changed.push(s.spec.file.clone());
                }
            }
        }
        let mut any = false;
        changed.sort();
        changed.dedup();
        for path in &changed {
            for s in stages.iter().filter(|s| same_file(&s.spec.file, path)) {
                stamps.insert(s.spec.file.clone(), file_stamp(&s.spec.file));
                any |= s.reload(runtime);
            }
        }
        if any || last_status.elapsed() >= Duration::from_secs(2) {
            last_status = Instant::now();
            write_status(status_file, &stages);
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.file_name(), b.file_name(), a.parent(), b.parent()) {
        (Some(fa), Some(fb), Some(pa), Some(pb)) if fa == fb => {
            match (pa.canonicalize(), pb.canonicalize()) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}
