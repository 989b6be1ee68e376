//! The `[[door]]` plugins, in order: the [`Door`] the daemon plugs into the
//! SMTP side. Each plugin is a [`Stage`] of its own (the same loading, hot
//! reload and built-in fallback as the chain's), called on the plugin pool
//! for the stages, listeners and clients its entry names. The first refusal
//! answers the command; a failure gets the plugin's `on_failure`. Every call
//! is counted (`finaldot_door_*` metrics) and every refusal and failure
//! logged with the plugin, the stage, the client and the reply.
//!
//! SECURITY: a plugin's reply is sent only if valid (4xx/5xx, matching
//! enhanced status, one printable line: checked by the plugin runtime); a
//! plugin that misbehaves gets its failure policy, never a 2xx on the wire.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use finaldot_sdk::wire::{DoorInput, DoorRecord, DoorStage, DoorVerdict, Listener};
use tracing::{info, warn};

use super::{Door, DoorAnswer, DoorMemory, DoorSpec, DoorWants, OnFailure};

/// Earlier answers kept per plugin and connection: the connect and HELO
/// ones, and the latest of the rest (a client looping MAIL and RCPT must not
/// grow what every call copies).
const EARLIER_KEPT: usize = 32;

/// Records `record` in a plugin's earlier answers, dropping the oldest MAIL
/// or RCPT answer past [`EARLIER_KEPT`].
fn remember(list: &mut Vec<DoorRecord>, mut record: DoorRecord) {
    if record.answer.len() > 300 {
        let mut cut = 300;
        while !record.answer.is_char_boundary(cut) {
            cut -= 1;
        }
        record.answer.truncate(cut);
    }
    list.push(record);
    if list.len() > EARLIER_KEPT {
        if let Some(i) = list
            .iter()
            .position(|r| matches!(r.stage, DoorStage::Mail | DoorStage::Rcpt))
        {
            list.remove(i);
        }
    }
}
use crate::metrics;
use crate::pipeline::Stage;
use crate::plugins::Runtime;

/// One door plugin: its entry, and its stage (module, hot reload) once
/// loaded.
#[derive(Debug)]
pub struct DoorPlugin {
    /// Its `[[door]]` entry.
    pub spec: DoorSpec,
    /// The loaded plugin; unset until [`DoorChain::load`] (its calls get
    /// the failure policy meanwhile).
    stage: OnceLock<Arc<Stage>>,
}

impl DoorPlugin {
    fn new(spec: DoorSpec) -> DoorPlugin {
        DoorPlugin {
            spec,
            stage: OnceLock::new(),
        }
    }

    /// Loads the plugin (once).
    fn load(&self, runtime: &Runtime) {
        let spec = &self.spec.plugin;
        self.stage.get_or_init(|| {
            let stage = Arc::new(Stage::load(runtime, spec.clone()));
            if let Ok(p) = stage.current() {
                if !p.has_door() {
                    warn!(plugin = %spec.name, "a [[door]] plugin without door stages (no finaldot_on_door: built with an older finaldot-sdk); its calls fail and get its on_failure");
                }
            }
            stage
        });
    }
}

/// The door plugins in force (replaced whole by a configuration reload).
#[derive(Debug, Default)]
pub struct DoorChain {
    plugins: RwLock<Arc<Vec<Arc<DoorPlugin>>>>,
}

impl DoorChain {
    /// The door plugins of `specs`, not loaded yet: what they judge is
    /// known at once (the listeners are set up with it), their calls get
    /// their failure policy until [`DoorChain::load`].
    pub fn new(specs: &[DoorSpec]) -> DoorChain {
        DoorChain {
            plugins: RwLock::new(Arc::new(
                specs
                    .iter()
                    .map(|s| Arc::new(DoorPlugin::new(s.clone())))
                    .collect(),
            )),
        }
    }

    /// Loads every plugin not loaded yet (a plugin that cannot load, or was
    /// built without door stages, is logged and gets its failure policy
    /// until a good file replaces it). Blocking.
    pub fn load(&self, runtime: &Runtime) {
        for p in self.snapshot().iter() {
            p.load(runtime);
        }
    }

    /// Replaces the door plugins with `specs` (a configuration reload) and
    /// loads the new ones: an entry whose settings did not change keeps its
    /// loaded plugin. Blocking.
    pub fn replace(&self, runtime: &Runtime, specs: &[DoorSpec]) {
        let current = self.snapshot();
        let plugins: Vec<Arc<DoorPlugin>> = specs
            .iter()
            .map(|spec| match current.iter().find(|p| p.spec == *spec) {
                Some(same) => same.clone(),
                None => Arc::new(DoorPlugin::new(spec.clone())),
            })
            .collect();
        match self.plugins.write() {
            Ok(mut p) => *p = Arc::new(plugins),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(plugins),
        }
        self.load(runtime);
    }

    /// The door plugins now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<DoorPlugin>>> {
        crate::read_clone(&self.plugins)
    }

    /// The loaded plugins' stages (for the reloader and the status file).
    pub fn stages(&self) -> Vec<Arc<Stage>> {
        self.snapshot()
            .iter()
            .filter_map(|p| p.stage.get().cloned())
            .collect()
    }

    /// Calls one plugin; its verdict, or the failure's text.
    fn call(&self, p: &DoorPlugin, input: &DoorInput, label: &str) -> Result<DoorVerdict, String> {
        let name = &p.spec.plugin.name;
        let plugin = p
            .stage
            .get()
            .ok_or_else(|| format!("plugin {name} is not loaded yet"))?
            .current()
            .map_err(|why| format!("plugin {name} is not available: {why}"))?;
        plugin
            .call_door(input, label, false)
            .map(|call| call.verdict)
            .map_err(|e| e.to_string())
    }
}

impl Door for DoorChain {
    fn wants(&self, listener: Listener) -> DoorWants {
        let mut wants = DoorWants::default();
        for p in self.snapshot().iter() {
            for (i, stage) in DoorStage::ALL.into_iter().enumerate() {
                wants.anonymous[i] |= p.spec.judges(stage, listener, false);
                wants.authenticated[i] |= p.spec.judges(stage, listener, true);
            }
        }
        wants
    }

    // Long on purpose: one plugin after another, each call counted, its answer recorded for the plugin's next stage, its refusal or failure logged, in the order an administrator reads them.
    fn judge(&self, ask: &DoorInput, memory: &mut DoorMemory) -> DoorAnswer {
        let authenticated = ask.session.auth.is_some();
        let stage = ask.stage;
        let m = metrics::global();
        for p in self.snapshot().iter() {
            if !p.spec.judges(stage, ask.session.listener, authenticated) {
                continue;
            }
            let name = p.spec.plugin.name.as_str();
            let earlier = memory.earlier.entry(name.to_string()).or_default();
            let mut input = ask.clone();
            input.earlier = earlier.clone();
            let started = Instant::now();
            let result = self.call(p, &input, &memory.label);
            let l = metrics::labels(&[("plugin", name), ("stage", stage.as_str())]);
            m.door_calls.get_or_create(&l).inc();
            m.door_call_seconds
                .get_or_create(&l)
                .observe(started.elapsed().as_secs_f64());
            let client = crate::Printable(&ask.session.client_ip);
            let about = ask.rcpt_to.as_deref().map(crate::Printable);
            let verdict = match result {
                Ok(verdict) => verdict,
                Err(why) => {
                    m.door_failures.get_or_create(&l).inc();
                    let policy = p.spec.on_failure;
                    warn!(plugin = %name, stage = stage.as_str(), %client, policy = ?policy, error = %crate::Printable(&why), "door plugin failed");
                    remember(
                        memory.earlier.entry(name.to_string()).or_default(),
                        DoorRecord {
                            stage,
                            rcpt_to: ask.rcpt_to.clone(),
                            answer: format!("failure: {why}"),
                        },
                    );
                    match policy {
                        OnFailure::Continue => continue,
                        OnFailure::Tempfail => return DoorAnswer::tempfail(stage),
                    }
                }
            };
            let answer = DoorAnswer::of(&verdict);
            let said = verdict.describe();
            remember(
                memory.earlier.entry(name.to_string()).or_default(),
                DoorRecord {
                    stage,
                    rcpt_to: ask.rcpt_to.clone(),
                    answer: said.clone(),
                },
            );
            if let DoorAnswer::Refuse { code, .. } = &answer {
                let code = code.to_string();
                m.door_refusals
                    .get_or_create(&metrics::labels(&[
                        ("plugin", name),
                        ("stage", stage.as_str()),
                        ("code", &code),
                    ]))
                    .inc();
                match about {
                    Some(rcpt) => {
                        info!(plugin = %name, stage = stage.as_str(), %client, to = %rcpt, reply = %crate::Printable(&said), "door refused")
                    }
                    None => {
                        info!(plugin = %name, stage = stage.as_str(), %client, reply = %crate::Printable(&said), "door refused")
                    }
                }
                return answer;
            }
        }
        DoorAnswer::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_answers_are_bounded_keeping_connect_and_helo() {
        let mut list = Vec::new();
        let at = |stage, answer: &str| DoorRecord {
            stage,
            rcpt_to: None,
            answer: answer.to_string(),
        };
        remember(&mut list, at(DoorStage::Connect, "continue"));
        remember(&mut list, at(DoorStage::Helo, "continue"));
        for n in 0..1000 {
            remember(&mut list, at(DoorStage::Rcpt, &format!("rcpt {n}")));
        }
        assert_eq!(list.len(), EARLIER_KEPT);
        assert_eq!(list[0].stage, DoorStage::Connect);
        assert_eq!(list[1].stage, DoorStage::Helo);
        assert_eq!(list.last().map(|r| r.answer.as_str()), Some("rcpt 999"));
        remember(&mut list, at(DoorStage::Mail, &"y".repeat(5000)));
        assert!(list.last().is_some_and(|r| r.answer.len() == 300));
    }
}
