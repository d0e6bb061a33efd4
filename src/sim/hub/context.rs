//! What every task of one emulator connection shares: the emulator, the cut switch, the tokens
//! put on `$cbs`, and the queues of `$cbs`/`$management` responses waiting for their reply link.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{AmqpValue, Message};
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::ConnAuth;
use super::store::lock;
use super::Shared;

/// Time allowed for polite closes (detach, end, close) before giving up.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Management responses queued per node before the request link waits.
const REPLY_QUEUE: usize = 64;

/// What every task of one connection shares.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    /// Cancelled to cut the connection (faults, shutdown).
    pub cut: CancellationToken,
    pub auth: Arc<ConnAuth>,
    pub peer: String,
    /// `$cbs`/`$management` responses waiting for their reply link.
    pub replies: Replies,
}

impl ConnCtx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cut: CancellationToken,
        auth: Arc<ConnAuth>,
        peer: String,
    ) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            shared,
            cut,
            auth,
            peer,
            replies: Replies::default(),
        })
    }
}

/// Per-connection queues of management responses, by node.
#[derive(Default)]
pub(crate) struct Replies {
    queues: std::sync::Mutex<HashMap<&'static str, ReplyQueue>>,
}

struct ReplyQueue {
    tx: mpsc::Sender<Message<AmqpValue<Value>>>,
    /// Taken by the reply link when it attaches.
    rx: Option<mpsc::Receiver<Message<AmqpValue<Value>>>>,
}

impl Replies {
    pub(crate) fn sender(&self, node: &'static str) -> mpsc::Sender<Message<AmqpValue<Value>>> {
        let mut queues = lock(&self.queues);
        queues
            .entry(node)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(REPLY_QUEUE);
                ReplyQueue { tx, rx: Some(rx) }
            })
            .tx
            .clone()
    }

    pub(crate) fn take_receiver(
        &self,
        node: &'static str,
    ) -> mpsc::Receiver<Message<AmqpValue<Value>>> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get_mut(node) {
            if let Some(rx) = q.rx.take() {
                return rx;
            }
        }
        // A second reply link for the node (the first was detached): start a new queue.
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        queues.insert(node, ReplyQueue { tx, rx: None });
        rx
    }
}
