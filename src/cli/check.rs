//! `tagbridge check`: validate, then say what the configuration will do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::tagmap::SecurityPolicy;
use crate::mapping::plan::{ModbusTransport, SourcePlan, TagMapPlan};
use crate::reading::{Number, Reading, Value};

/// Event Hubs throughput unit: 1 000 events/s or 1 MB/s of ingress, whichever is reached first.
const TU_EVENTS_PER_S: f64 = 1000.0;
const TU_BYTES_PER_S: f64 = 1_048_576.0;

/// With `-c`, exactly what `run` checks before it starts ([`crate::runtime::prepare`]); tag
/// map paths given besides are checked as well.
pub fn check(config: Option<&Path>, paths: &[PathBuf]) -> ExitCode {
    // `tagbridge check /etc/tagbridge`: a directory holding gateway.yaml is that configuration.
    if let (None, [dir]) = (config, paths) {
        let gateway = dir.join("gateway.yaml");
        if dir.is_dir() && gateway.is_file() {
            return check(Some(&gateway), &[]);
        }
    }
    let loaded = match config {
        Some(config) => {
            let prepared = crate::runtime::prepare_with(config, crate::runtime::Secrets::ServiceMayHold)
                .map(|(prepared, unread)| {
                    if let Some(path) = unread {
                        eprintln!(
                            "note: {path} is a systemd credential that exists only while the service runs; not checked here (`tagbridge send-test` as the service checks it)"
                        );
                    }
                    let array = match &prepared.plan.sink {
                        crate::config::plan::SinkPlan::EventHub(hub) => {
                            hub.readings_per_event.map(|n| n.get())
                        }
                        _ => None,
                    };
                    (prepared.tag_maps, array)
                });
            if paths.is_empty() {
                prepared
            } else {
                match (prepared, super::load_tag_maps(paths)) {
                    (Ok((mut a, array)), Ok(b)) => {
                        a.extend(b);
                        Ok((a, array))
                    }
                    (Err(mut a), Err(b)) => {
                        a.diagnostics.extend(b.diagnostics);
                        a.sort();
                        Err(a)
                    }
                    (Err(a), _) | (_, Err(a)) => Err(a),
                }
            }
        }
        None => super::load_tag_maps(paths).map(|plans| (plans, None)),
    };
    let (plans, array) = match loaded {
        Ok(plans) => plans,
        Err(report) => {
            eprint!("{}", report.render());
            eprintln!(
                "{} error(s); nothing was started.",
                report.diagnostics.len()
            );
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    print!("{}", summary(&plans));
    let estimates = super::check_estimate::estimate(
        &plans,
        array.unwrap_or(super::check_estimate::DEFAULT_ARRAY),
    );
    print!(
        "{}",
        super::check_estimate::render(&estimates, array.is_some())
    );
    ExitCode::SUCCESS
}

/// What `check` prints for valid tag maps.
pub fn summary(plans: &[TagMapPlan]) -> String {
    let mut out = String::new();
    let (mut tags, mut rate, mut bytes_rate) = (0usize, 0.0f64, 0.0f64);
    for plan in plans {
        // Folded from +0.0: an empty f64 `sum()` is -0.0, printed as "-0.0".
        let plan_rate: f64 = plan
            .tags
            .iter()
            .map(|t| per_second(t.interval))
            .fold(0.0, |a, b| a + b);
        let plan_bytes: f64 = plan
            .tags
            .iter()
            .map(|t| per_second(t.interval) * event_bytes(t))
            .fold(0.0, |a, b| a + b);
        let disabled = if plan.disabled > 0 {
            format!(" ({} disabled)", plan.disabled)
        } else {
            String::new()
        };
        // Event readings come as the server sends them: counted, not rated.
        let events = match &plan.source {
            SourcePlan::OpcUa(o) if !o.events.is_empty() => {
                format!(", {} event subscriptions", o.events.len())
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{}: {}, {} tags{disabled}{events}, up to {plan_rate:.1} readings/s\n",
            plan.path.display(),
            describe(&plan.source),
            plan.tags.len()
        ));
        if let SourcePlan::Modbus(m) = &plan.source {
            out.push_str(&modbus_cycles(plan, m));
        }
        tags += plan.tags.len();
        rate += plan_rate;
        bytes_rate += plan_bytes;
    }
    let units = (rate / TU_EVENTS_PER_S)
        .max(bytes_rate / TU_BYTES_PER_S)
        .ceil()
        .max(1.0);
    let avg = if rate > 0.0 { bytes_rate / rate } else { 0.0 };
    out.push_str(&format!(
        "total: {} sources, {tags} tags, up to {rate:.1} readings/s, {:.1} KB/s at ~{avg:.0} B/event; \
         at one reading per event that needs {units} Event Hubs throughput unit(s)\n",
        plans.len(),
        bytes_rate / 1024.0,
    ));
    out
}

/// The Modbus poll plan: read requests per cycle, per device (unit id) and interval.
fn modbus_cycles(plan: &TagMapPlan, source: &crate::mapping::ModbusPlan) -> String {
    use crate::source::modbus::planner::{summarize, Limits};
    let mut out = String::new();
    let mut current: Option<u8> = None;
    for line in summarize(plan, Limits::for_plan(source)) {
        if current != Some(line.unit) {
            if current.is_some() {
                out.push('\n');
            }
            current = Some(line.unit);
            out.push_str(&format!("  unit {}:", line.unit));
        } else {
            out.push(',');
        }
        let s = |n: usize| if n == 1 { "" } else { "s" };
        out.push_str(&format!(
            " {} read{} per cycle every {:?} ({} tag{})",
            line.requests,
            s(line.requests),
            line.interval,
            line.tags,
            s(line.tags)
        ));
    }
    if current.is_some() {
        out.push('\n');
    }
    if source.connections.get() > 1 {
        out.push_str(&format!(
            "  spread over {} connections, one request in flight on each\n",
            source.connections
        ));
    }
    out
}

fn per_second(interval: Duration) -> f64 {
    1.0 / interval.as_secs_f64().max(0.001)
}

/// Size of one event for this tag with a typical 8-digit value.
fn event_bytes(tag: &crate::mapping::TagPlan) -> f64 {
    let sample = Reading {
        sensor_id: tag.sensor_id.clone(),
        timestamp: chrono::Utc::now(),
        value: Value::Number(Number::float(12345.678).unwrap_or(Number::Int(0))),
        extra: tag.extra.clone(),
    };
    sample.to_json().len() as f64
}

fn describe(source: &SourcePlan) -> String {
    match source {
        SourcePlan::OpcUa(o) => match o.security_policy {
            SecurityPolicy::None => format!("OPC UA {} (no security)", o.endpoint),
            policy => format!("OPC UA {} ({policy:?}, {:?})", o.endpoint, o.security_mode),
        },
        SourcePlan::Modbus(m) => match &m.transport {
            ModbusTransport::Tcp(a) => format!("Modbus TCP {a}"),
            ModbusTransport::RtuOverTcp(a) => format!("Modbus RTU over TCP {a}"),
            ModbusTransport::Serial { port, baud, .. } => {
                format!("Modbus RTU {port} at {baud} baud")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn an_events_only_tag_map_counts_its_subscriptions_and_no_negative_rate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alarms.yaml");
        std::fs::write(
            &path,
            "source:\n  opcua: {endpoint: \"opc.tcp://h:4840/\", security_policy: none}\n\
             events:\n  - sensor_id: \"{SourceName}\"\n  - sensor_id: area\n    notifier: ns=2;s=Area\n",
        )
        .expect("write");
        let plans = crate::mapping::load_all(&[path]).expect("valid");
        let out = super::summary(&plans);
        assert!(
            out.contains(": OPC UA opc.tcp://h:4840/ (no security), 0 tags, 2 event subscriptions, up to 0.0 readings/s\n"),
            "{out}"
        );
    }

    #[test]
    fn modbus_plans_print_reads_per_cycle_per_unit() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tag-maps/press-3.yaml");
        let plans = crate::mapping::load_all(&[path]).expect("the shipped tag map is valid");
        let out = super::summary(&plans);
        // Holding 0..=11 joined across an 8-register gap, input 0..=5, discrete input 0; the
        // 30 s string alone.
        assert!(
            out.contains(
                "\n  unit 1: 3 reads per cycle every 1s (7 tags), 1 read per cycle every 30s (1 tag)\n"
            ),
            "{out}"
        );
    }
}
