//! The tag maps running now: for each, its source adapter and mapping task under one
//! cancellation token, so a reload can stop, replace or add one without touching the others.
//!
//! Invariants: a tag map is identified by its file path; a running one is replaced only when its
//! file's content changed; every mapping task holds a clone of the readings sender, so the output
//! ends only after the last tag map (and this set, which holds one too) is gone.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::delivery::TaggedReadings;
use super::map_task::{map_task, Watch, SAMPLE_QUEUE};
use super::status::{MapEntry, MapStats, RunningMaps};
use crate::mapping::quality::QualityState;
use crate::mapping::{Mapper, MappingCounters, TagMapPlan};
use crate::sample::SampleBatch;
use crate::source;
use crate::telemetry::live::{LiveMap, LiveView};

struct Running {
    cancel: CancellationToken,
    /// Hash of the file's bytes when it was started.
    content: u64,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub started: usize,
    pub restarted: usize,
    pub stopped: usize,
    pub unchanged: usize,
}

pub struct TagMaps {
    tracker: TaskTracker,
    readings: mpsc::Sender<TaggedReadings>,
    totals: Arc<Mutex<MappingCounters>>,
    shutdown: CancellationToken,
    running: HashMap<PathBuf, Running>,
    status: RunningMaps,
    modbus: crate::source::modbus::ModbusStats,
    /// The live view, when served.
    live: Option<Arc<LiveView>>,
    /// Watches the mapping tasks: a panic stops the gateway.
    supervisor: Option<super::supervise::Supervisor>,
    /// Quality readings on (gateway.yaml `quality: true`).
    quality: bool,
}

impl TagMaps {
    pub fn new(
        tracker: TaskTracker,
        readings: mpsc::Sender<TaggedReadings>,
        totals: Arc<Mutex<MappingCounters>>,
        shutdown: CancellationToken,
        status: RunningMaps,
        modbus: crate::source::modbus::ModbusStats,
    ) -> Self {
        TagMaps {
            tracker,
            readings,
            totals,
            shutdown,
            running: HashMap::new(),
            status,
            modbus,
            live: None,
            supervisor: None,
            quality: false,
        }
    }

    /// Quality readings for every tag map started from now on.
    pub fn with_quality(mut self, quality: bool) -> Self {
        self.quality = quality;
        self
    }

    /// Mapping tasks are spawned under `supervisor`.
    pub fn with_supervisor(mut self, supervisor: super::supervise::Supervisor) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Feeds the live view from every tag map started from now on.
    pub fn with_live(mut self, live: Option<Arc<LiveView>>) -> Self {
        self.live = live;
        self
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Makes the running set match `plans`: new files start, changed files restart, removed
    /// files stop, unchanged files keep their connections.
    pub fn apply(&mut self, plans: Vec<TagMapPlan>) -> Applied {
        let mut applied = Applied::default();
        let wanted: Vec<PathBuf> = plans.iter().map(|p| p.path.clone()).collect();
        let gone: Vec<PathBuf> = self
            .running
            .keys()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.stop(&path);
            applied.stopped += 1;
            tracing::info!(message = "Tag map removed; its source stopped.", path = %path.display());
        }
        for plan in plans {
            let content = content_hash(&plan.path);
            match self.running.get(&plan.path) {
                Some(r) if r.content == content => {
                    applied.unchanged += 1;
                    continue;
                }
                Some(_) => {
                    self.stop(&plan.path);
                    self.start(&plan, content);
                    applied.restarted += 1;
                    tracing::info!(message = "Tag map changed; its source restarted.", path = %plan.path.display());
                }
                None => {
                    self.start(&plan, content);
                    applied.started += 1;
                }
            }
        }
        applied
    }

    fn start(&mut self, plan: &TagMapPlan, content: u64) {
        let quality_plan;
        let plan = if self.quality {
            let mut p = plan.clone();
            crate::mapping::quality::enable(&mut p);
            quality_plan = p;
            &quality_plan
        } else {
            plan
        };
        let (tx, rx) = mpsc::channel::<SampleBatch>(SAMPLE_QUEUE);
        let cancel = self.shutdown.child_token();
        let counters = source::spawn(plan, tx, cancel.clone(), &self.tracker);
        let name: Arc<str> = plan
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into();
        let stats = Arc::new(MapStats::default());
        if let source::SourceCounters::Modbus(c) = &counters {
            self.modbus.add(&name, c);
        }
        let connected: Box<dyn Fn() -> bool + Send + Sync> = {
            let source = counters.clone();
            Box::new(move || source.connected())
        };
        let live = self.live.as_ref().map(|view| {
            let source = counters.clone();
            let map = Arc::new(LiveMap::for_plan(
                plan,
                name.clone(),
                Box::new(move || source.connected()),
            ));
            view.add(map.clone());
            map
        });
        if let Ok(mut maps) = self.status.write() {
            maps.retain(|m| m.name != name);
            maps.push(MapEntry {
                name: name.clone(),
                stats: stats.clone(),
                source: counters,
            });
        }
        let supervisor = self.supervisor.clone();
        let source_cancel = cancel.clone();
        let has_tags = !plan.tags.is_empty();
        let path = plan.path.display().to_string();
        let task = map_task(
            name,
            Mapper::new(plan),
            rx,
            self.readings.clone(),
            self.totals.clone(),
            stats,
            Watch {
                live,
                quality: QualityState::new(plan),
                connected,
            },
        );
        // An adapter that drops its sender without being told to has died (a panic in one
        // of its tasks): the gateway must not run on without it.
        let task = async move {
            task.await;
            if has_tags && !source_cancel.is_cancelled() {
                if let Some(supervisor) = supervisor {
                    supervisor.fail("source", &format!("the source of {path} stopped by itself"));
                }
            }
        };
        match &self.supervisor {
            Some(supervisor) => supervisor.spawn(&self.tracker, "mapping", task),
            None => {
                self.tracker.spawn(task);
            }
        }
        self.running
            .insert(plan.path.clone(), Running { cancel, content });
    }

    fn stop(&mut self, path: &PathBuf) {
        if let Some(r) = self.running.remove(path) {
            // The adapter stops; its mapping task drains what it sent and ends.
            r.cancel.cancel();
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        if let (Some(live), Some(stem)) = (&self.live, &stem) {
            live.remove(stem);
        }
        if let (Ok(mut maps), Some(stem)) = (self.status.write(), stem) {
            maps.retain(|m| *m.name != *stem);
        }
    }
}

fn content_hash(path: &PathBuf) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}
