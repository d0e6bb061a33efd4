//! The sink's in-flight window: every batch from the moment it is packed until the hub accepted
//! it and every batch before it, oldest first. Pure state, no I/O: the sink task feeds it events
//! (sent, settled, link lost) and reads back what to send and what to acknowledge, so each
//! at-least-once transition is unit-tested on its own.
//!
//! Invariants:
//! - A batch is `Queued` (to send, for the first time or again), `Sent` (its settlement is
//!   awaited) or `Accepted`. Only `Queued` batches are ever sent, oldest first; an accepted batch
//!   is never sent again, so a refusal of one batch resends that batch and nothing else.
//! - Acknowledgements are cumulative and in order: the front is released only once accepted, and
//!   the acknowledged sequence number is the last of the released batches. A batch accepted
//!   behind a refused one waits (accepted) until the refused one is accepted on a resend.
//! - Before a lost link's batches are queued again, every settlement the hub already sent is read
//!   ([`Window::honour_ready`]): only what was really not accepted is resent.
//! - Throttling shrinks the window, AIMD-like: a refusal (`server-busy`) of a batch sent after the
//!   last decrease halves the number of batches allowed on the wire (at least one); each window's
//!   worth of acceptances widens it by one, up to `max_in_flight`. Several refusals of one round
//!   (batches sent before the decrease) count once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

use super::event::Batch;
use super::transport::{Delivery, Settled};

/// Where one batch stands.
enum SlotState {
    /// Waiting to be sent: new, refused, or left unsettled on a lost link.
    Queued,
    /// Handed to the link; the hub's answer comes through `delivery`.
    Sent {
        /// `None` once the answer was taken (the slot then changes state at once).
        delivery: Option<Delivery>,
        sent_at: Instant,
        /// When a missing answer means the link is lost.
        settle_by: Instant,
    },
    /// The hub stored it; released (acknowledged) once every older batch is.
    Accepted,
}

struct Slot {
    /// `None` for a marker that only carries a sequence number to acknowledge in order (an event
    /// written to the dead-letter file).
    batch: Option<Batch>,
    /// The last sequence number this slot covers.
    last_seq: Option<u64>,
    state: SlotState,
}

/// What a settlement did to the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted, `latency` after it was sent.
    Accepted { latency: std::time::Duration },
    /// Refused as busy: queued again; `shrunk` says whether the window was halved.
    Busy { shrunk: bool },
    /// The credential was refused for this batch: queued again.
    Unauthorized,
    /// Refused as too large (`size` bytes): queued again, to be split.
    TooLarge { size: usize },
    /// Any other failure: queued again, and the link should be replaced.
    Failed,
}

/// The in-flight window. See the module doc.
pub struct Window {
    slots: VecDeque<Slot>,
    /// Batches allowed on the wire now (1 ..= max).
    limit: usize,
    max: usize,
    /// Acceptances since the window last grew.
    accepted_since_growth: usize,
    /// When the window was last halved: refusals of batches sent before belong to that round.
    last_decrease: Option<Instant>,
}

impl Window {
    /// An empty window allowing `max_in_flight` (at least 1) batches on the wire.
    pub fn new(max_in_flight: usize) -> Window {
        let max = max_in_flight.max(1);
        Window {
            slots: VecDeque::new(),
            limit: max,
            max,
            accepted_since_growth: 0,
            last_decrease: None,
        }
    }

    /// Adds a packed batch behind the others.
    pub fn push(&mut self, batch: Batch) {
        let last_seq = batch.seqs().last().copied();
        self.slots.push_back(Slot {
            batch: Some(batch),
            last_seq,
            state: SlotState::Queued,
        });
    }

    /// Adds an already-settled sequence number (a dead-lettered event), acknowledged in order.
    pub fn push_settled(&mut self, seq: u64) {
        self.slots.push_back(Slot {
            batch: None,
            last_seq: Some(seq),
            state: SlotState::Accepted,
        });
    }

    /// Batches (and markers) not yet released.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Events not yet released (accepted-but-waiting included).
    pub fn events(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.batch.as_ref().map_or(0, Batch::len))
            .sum()
    }

    /// Batches whose answer is awaited.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Sent { .. }))
            .count()
    }

    /// Batches allowed on the wire now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The oldest queued batch, if the window has room for one more on the wire.
    pub fn next_to_send(&self) -> Option<(usize, &Batch)> {
        if self.in_flight() >= self.limit {
            return None;
        }
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| match (&s.state, &s.batch) {
                (SlotState::Queued, Some(b)) => Some((i, b)),
                _ => None,
            })
    }

    /// The encoded size of the batch at `index`, for the bytes-sent counter.
    pub fn encoded_size(&self, index: usize) -> Option<usize> {
        self.slots
            .get(index)
            .and_then(|s| s.batch.as_ref())
            .map(Batch::encoded_size)
    }

    /// The batch at `index` was handed to the link.
    pub fn mark_sent(
        &mut self,
        index: usize,
        delivery: Delivery,
        now: Instant,
        settle_by: Instant,
    ) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.state = SlotState::Sent {
                delivery: Some(delivery),
                sent_at: now,
                settle_by,
            };
        }
    }

    /// The earliest instant by which a batch on the wire must be settled.
    pub fn settle_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Sent { settle_by, .. } => Some(settle_by),
                _ => None,
            })
            .min()
    }

    /// Polls every awaited answer; the first that arrived, with its slot.
    pub fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<(usize, Settled)> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let SlotState::Sent {
                delivery: Some(d), ..
            } = &mut slot.state
            {
                if let Poll::Ready(settled) = d.as_mut().poll(cx) {
                    return Poll::Ready((i, settled));
                }
            }
        }
        Poll::Pending
    }

    /// Waits for the next answer (pending for ever when nothing is on the wire).
    pub fn next_settled(&mut self) -> NextSettled<'_> {
        NextSettled(self)
    }

    /// Applies the hub's answer for the batch at `index`.
    pub fn settle(&mut self, index: usize, settled: Settled, now: Instant) -> Verdict {
        let Some(slot) = self.slots.get_mut(index) else {
            return Verdict::Failed;
        };
        let sent_at = match slot.state {
            SlotState::Sent { sent_at, .. } => sent_at,
            _ => now,
        };
        match settled {
            Settled::Accepted => {
                slot.state = SlotState::Accepted;
                self.accepted_since_growth += 1;
                if self.accepted_since_growth >= self.limit && self.limit < self.max {
                    self.limit += 1;
                    self.accepted_since_growth = 0;
                }
                Verdict::Accepted {
                    latency: now.saturating_duration_since(sent_at),
                }
            }
            Settled::Busy(_) => {
                slot.state = SlotState::Queued;
                let new_round = self.last_decrease.is_none_or(|d| sent_at >= d);
                if new_round {
                    self.limit = (self.limit / 2).max(1);
                    self.accepted_since_growth = 0;
                    self.last_decrease = Some(now);
                }
                Verdict::Busy { shrunk: new_round }
            }
            Settled::Unauthorized(_) => {
                slot.state = SlotState::Queued;
                Verdict::Unauthorized
            }
            Settled::TooLarge(_) => {
                slot.state = SlotState::Queued;
                Verdict::TooLarge {
                    size: slot.batch.as_ref().map_or(0, Batch::encoded_size),
                }
            }
            Settled::Failed(_) => {
                slot.state = SlotState::Queued;
                Verdict::Failed
            }
        }
    }

    /// Releases the accepted batches at the front: the last sequence number released and the
    /// number of events, if any.
    pub fn release(&mut self) -> Option<(u64, usize)> {
        let mut last = None;
        let mut events = 0;
        while matches!(
            self.slots.front(),
            Some(Slot {
                state: SlotState::Accepted,
                ..
            })
        ) {
            if let Some(slot) = self.slots.pop_front() {
                last = slot.last_seq.or(last);
                events += slot.batch.as_ref().map_or(0, Batch::len);
            }
        }
        last.map(|seq| (seq, events))
    }

    /// Reads every answer that has already arrived (without waiting) and returns them, so a lost
    /// link's settlements are honoured before anything is queued again.
    pub fn honour_ready(&mut self, now: Instant) -> Vec<Verdict> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut verdicts = Vec::new();
        while let Poll::Ready((i, settled)) = self.poll_settled(&mut cx) {
            verdicts.push(self.settle(i, settled, now));
        }
        verdicts
    }

    /// Splits every queued batch larger than `max_size` (packed before the link said how much
    /// it takes). Events too large alone become settled markers, returned as (seq, size) for
    /// the dead-letter file.
    pub fn fit_queued(&mut self, max_size: usize) -> Vec<(u64, usize)> {
        let too_big = |s: &Slot| {
            matches!(s.state, SlotState::Queued)
                && s.batch
                    .as_ref()
                    .is_some_and(|b| b.encoded_size() > max_size)
        };
        if !self.slots.iter().any(too_big) {
            return Vec::new();
        }
        let mut refused = Vec::new();
        let mut slots = VecDeque::with_capacity(self.slots.len());
        for slot in std::mem::take(&mut self.slots) {
            if !too_big(&slot) {
                slots.push_back(slot);
                continue;
            }
            let Some(batch) = slot.batch else { continue };
            for part in batch.split(max_size) {
                match part {
                    Ok(b) => slots.push_back(Slot {
                        last_seq: b.seqs().last().copied(),
                        batch: Some(b),
                        state: SlotState::Queued,
                    }),
                    Err((seq, size)) => {
                        refused.push((seq, size));
                        slots.push_back(Slot {
                            batch: None,
                            last_seq: Some(seq),
                            state: SlotState::Accepted,
                        });
                    }
                }
            }
        }
        self.slots = slots;
        refused
    }

    /// The link is gone: every batch still awaiting an answer is queued again, in order.
    /// Returns how many.
    pub fn requeue_unsettled(&mut self) -> usize {
        let mut n = 0;
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Sent { .. }) {
                slot.state = SlotState::Queued;
                n += 1;
            }
        }
        n
    }
}

/// The future of [`Window::next_settled`].
pub struct NextSettled<'a>(&'a mut Window);

impl Future for NextSettled<'_> {
    type Output = (usize, Settled);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_settled(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let mut b = Batch::new(None, 1 << 20);
        for seq in seqs {
            b.try_add(seq, vec![0; 10]).unwrap();
        }
        b
    }

    fn answer(s: Settled) -> Delivery {
        Box::pin(std::future::ready(s))
    }

    fn never() -> Delivery {
        Box::pin(std::future::pending())
    }

    /// Sends every batch the window allows, each with the delivery `make(i)`.
    fn send_all(
        w: &mut Window,
        now: Instant,
        mut make: impl FnMut(usize) -> Delivery,
    ) -> Vec<usize> {
        let mut sent = Vec::new();
        while let Some((i, _)) = w.next_to_send() {
            w.mark_sent(i, make(i), now, now + Duration::from_secs(60));
            sent.push(i);
        }
        sent
    }

    #[test]
    fn accepted_batches_are_released_in_order_only() {
        let now = Instant::now();
        let mut w = Window::new(4);
        w.push(batch(1..=2));
        w.push(batch(3..=4));
        send_all(&mut w, now, |_| never());
        assert_eq!(
            w.settle(1, Settled::Accepted, now),
            Verdict::Accepted {
                latency: Duration::ZERO
            }
        );
        assert_eq!(
            w.release(),
            None,
            "the second batch may not be acknowledged before the first"
        );
        w.settle(0, Settled::Accepted, now);
        assert_eq!(w.release(), Some((4, 4)));
        assert!(w.is_empty());
    }

    #[test]
    fn a_refused_front_resends_only_itself() {
        let now = Instant::now();
        let mut w = Window::new(4);
        for i in 0..4 {
            w.push(batch(i * 10 + 1..=i * 10 + 10));
        }
        send_all(&mut w, now, |_| never());
        assert_eq!(
            w.settle(0, Settled::Busy("busy".into()), now),
            Verdict::Busy { shrunk: true }
        );
        for i in 1..4 {
            w.settle(i, Settled::Accepted, now);
        }
        assert_eq!(w.release(), None);
        let (i, b) = w.next_to_send().expect("the refused batch is queued again");
        assert_eq!((i, b.seqs()[0]), (0, 1));
        w.mark_sent(i, answer(Settled::Accepted), now, now);
        assert!(w.next_to_send().is_none(), "nothing else is sent again");
        let verdicts = w.honour_ready(now);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(w.release(), Some((40, 40)));
    }

    #[test]
    fn a_lost_link_honours_answers_already_in_and_requeues_the_rest() {
        let now = Instant::now();
        let mut w = Window::new(3);
        w.push(batch(1..=1));
        w.push(batch(2..=2));
        w.push(batch(3..=3));
        send_all(&mut w, now, |i| {
            if i == 1 {
                never()
            } else {
                answer(Settled::Accepted)
            }
        });
        let verdicts = w.honour_ready(now);
        assert_eq!(verdicts.len(), 2);
        assert_eq!(w.requeue_unsettled(), 1);
        assert_eq!(w.release(), Some((1, 1)));
        let queued: Vec<u64> = std::iter::from_fn(|| {
            let (i, b) = w.next_to_send()?;
            let seq = b.seqs()[0];
            w.mark_sent(i, never(), now, now);
            Some(seq)
        })
        .collect();
        assert_eq!(queued, vec![2], "only the unanswered batch is resent");
    }

    #[test]
    fn throttling_halves_the_window_once_per_round_and_acceptances_widen_it() {
        let t0 = Instant::now();
        let mut w = Window::new(16);
        for i in 0..16 {
            w.push(batch(i + 1..=i + 1));
        }
        send_all(&mut w, t0, |_| never());
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(
            w.settle(0, Settled::Busy(String::new()), t1),
            Verdict::Busy { shrunk: true }
        );
        assert_eq!(
            w.settle(1, Settled::Busy(String::new()), t1),
            Verdict::Busy { shrunk: false }
        );
        assert_eq!(w.limit(), 8, "two refusals of one round halve once");
        for i in 2..16 {
            w.settle(i, Settled::Accepted, t1);
        }
        // 14 acceptances at a limit of 8: grows once (then counts again from 0 at 9).
        assert_eq!(w.limit(), 9);
        // A refusal of a batch sent after the decrease starts a new round.
        let t2 = t1 + Duration::from_secs(4);
        let sent = send_all(&mut w, t2, |_| never());
        assert_eq!(sent, vec![0, 1]);
        w.settle(0, Settled::Busy(String::new()), t2);
        assert_eq!(w.limit(), 4);
        for round in 1..10 {
            let at = t2 + Duration::from_secs(5 * round);
            let sent = send_all(&mut w, at, |_| never());
            for i in sent {
                w.settle(i, Settled::Busy(String::new()), at + Duration::from_secs(1));
            }
        }
        assert_eq!(
            w.limit(),
            1,
            "sustained throttling leaves one batch on the wire"
        );
    }

    #[test]
    fn markers_keep_acks_in_order() {
        let now = Instant::now();
        let mut w = Window::new(2);
        w.push(batch(1..=1));
        w.push_settled(2);
        assert_eq!(w.release(), None);
        send_all(&mut w, now, |_| answer(Settled::Accepted));
        w.honour_ready(now);
        assert_eq!(w.release(), Some((2, 1)));
    }

    #[test]
    fn failures_and_refused_credentials_queue_the_batch_again() {
        let now = Instant::now();
        let mut w = Window::new(2);
        w.push(batch(1..=1));
        send_all(&mut w, now, |_| never());
        assert_eq!(
            w.settle(0, Settled::Unauthorized("401".into()), now),
            Verdict::Unauthorized
        );
        assert!(w.next_to_send().is_some());
        send_all(&mut w, now, |_| never());
        assert_eq!(
            w.settle(0, Settled::Failed("gone".into()), now),
            Verdict::Failed
        );
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.events(), 1);
    }

    #[test]
    fn queued_batches_are_split_for_a_smaller_link() {
        let now = Instant::now();
        let mut w = Window::new(4);
        let mut big = Batch::new(None, 1 << 20);
        for seq in 1..=50 {
            big.try_add(seq, vec![1; 100]).unwrap();
        }
        w.push(big);
        assert!(w.fit_queued(1 << 20).is_empty());
        assert!(w.fit_queued(2048).is_empty());
        assert!(w.len() > 2);
        let mut seqs = Vec::new();
        while let Some((i, b)) = w.next_to_send() {
            assert!(b.encoded_size() <= 2048);
            seqs.extend_from_slice(b.seqs());
            w.mark_sent(i, answer(Settled::Accepted), now, now);
        }
        w.honour_ready(now);
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        assert_eq!(w.release(), Some((50, 50)));
    }
}
