//! `tagbridge send-test`: sends one marked event with the configured credentials and says
//! plainly whether the hub accepted it. The first thing a field engineer runs.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use crate::config::gateway::SinkSpec;
use crate::reading::{Reading, Value};
use crate::sink::eventhub::event::Batch;
use crate::sink::eventhub::link::{encoder, Link, Settled};
use crate::sink::eventhub::setup;

/// The sensor_id of test events, so consumers can filter them out.
pub const SEND_TEST_SENSOR_ID: &str = "tagbridge:send-test";

pub fn send_test(config_path: &Path) -> ExitCode {
    let gateway = match crate::config::load_gateway(config_path) {
        Ok(g) => g,
        Err(report) => {
            eprint!("{}", report.render());
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    let SinkSpec::Eventhub(spec) = &gateway.sink else {
        eprintln!(
            "{}: the sink is not `eventhub`; nothing to test",
            config_path.display()
        );
        return ExitCode::from(super::EXIT_INVALID);
    };
    let base = config_path.parent().unwrap_or(Path::new("."));
    let (target, credential) = match setup::build(spec, base) {
        Ok(built) => built,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(super::EXIT_INVALID);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    println!(
        "Sending one test event to hub `{}` at {}:{} as {} ...",
        target.hub,
        target.host,
        target.port,
        credential.describe()
    );
    let started = Instant::now();
    let result = runtime.block_on(async {
        let mut link = Link::open(&target, &credential, chrono::Utc::now().timestamp()).await?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this gateway".into());
        let reading = Reading {
            sensor_id: SEND_TEST_SENSOR_ID.into(),
            timestamp: chrono::Utc::now(),
            value: Value::Text(format!("send-test from {host}").into()),
            extra: ",\"test\":true".into(),
        };
        let mut encoded = Vec::new();
        let id = format!("tagbridge-send-test-{:016x}", rand::random::<u64>());
        encoder(target.transport)(&mut encoded, &id, None, reading.to_json().as_bytes());
        let mut batch = Batch::new(None, link.max_message_size());
        // One small event always fits an empty batch.
        let _ = batch.try_add(0, encoded);
        let outcome = link.send(batch).await?.await;
        link.close().await;
        Ok::<_, crate::sink::eventhub::amqp::LinkError>((outcome, id))
    });
    match result {
        Ok((Settled::Accepted, id)) => {
            println!(
                "Accepted in {} ms (message id {id}). Credentials and network are good.",
                started.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Ok((Settled::Unauthorized(why), _)) => {
            eprintln!("The hub refused {}: {why}", credential.describe());
            ExitCode::from(super::EXIT_FAILURE)
        }
        Ok((Settled::Busy(why) | Settled::TooLarge(why) | Settled::Failed(why), _)) => {
            eprintln!("The hub did not accept the event: {why}");
            ExitCode::from(super::EXIT_FAILURE)
        }
        Err(error) => {
            eprintln!("error: {error}");
            if error.is_auth() {
                eprintln!("hint: check the key name and key, that the policy has Send rights on this hub, and the hub name.");
            }
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}
