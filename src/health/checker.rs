//! The checker thread: one thread keeps every upstream's check in flight at
//! once with non-blocking connects and one poll(2), so a pool of upstreams
//! that all time out still sees each checked every interval. The timing is
//! `Schedule`'s and the verdict `Tracker`'s; this file only does the I/O.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;

use super::Event;
use super::schedule::Schedule;
use super::state::{Failure, Outcome, State, Tracker};
use crate::config::HealthCheck;
use crate::sys::connect::Connecting;
use crate::sys::eventfd::EventFd;
use crate::sys::poll::{PollFd, poll};

/// How to check one upstream.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub addr: SocketAddr,
    pub check: HealthCheck,
    /// Sent once connected (a PROXY header), then the check closes.
    pub hello: Vec<u8>,
    /// The verdict it starts with (carried over a reload; up otherwise).
    pub start: State,
}

/// The running checker; dropping it stops the thread and waits for it.
pub(crate) struct Checker {
    doorbell: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    pub(crate) fn spawn(probes: Vec<Probe>, events: Sender<Event>) -> io::Result<Checker> {
        let doorbell = Arc::new(EventFd::new()?);
        let bell = doorbell.clone();
        let thread = std::thread::Builder::new()
            .name("rfwd-health".to_owned())
            .spawn(move || {
                if let Err(e) = Run::new(probes, events).serve(&bell) {
                    error!("health checker stopped: poll: {e}; upstreams keep the state they had");
                }
            })?;
        Ok(Checker {
            doorbell,
            thread: Some(thread),
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.doorbell.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread's state: the probes, their timing and verdicts, the connects
/// in flight (by probe index).
struct Run {
    probes: Vec<Probe>,
    schedule: Schedule,
    trackers: Vec<Tracker>,
    pending: Vec<Option<Connecting>>,
    events: Sender<Event>,
    start: Instant,
}

/// Whether the thread goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// The control thread hung up or rang the doorbell.
    Stop,
}

impl Run {
    fn new(probes: Vec<Probe>, events: Sender<Event>) -> Run {
        let timing: Vec<(Duration, Duration)> = probes
            .iter()
            .map(|p| (p.check.interval, p.check.timeout))
            .collect();
        Run {
            schedule: Schedule::new(&timing),
            trackers: probes
                .iter()
                .map(|p| Tracker::starting(p.check.rise, p.check.fall, p.start))
                .collect(),
            pending: probes.iter().map(|_| None).collect(),
            probes,
            events,
            start: Instant::now(),
        }
    }

    fn serve(mut self, doorbell: &EventFd) -> io::Result<()> {
        let mut batch = Vec::new();
        let mut fds = Vec::new();
        let mut owners = Vec::new();
        loop {
            if self.turn(&mut batch) == Flow::Stop {
                return Ok(());
            }
            fds.clear();
            owners.clear();
            fds.push(PollFd::readable(doorbell.raw()));
            for (i, c) in self.pending.iter().enumerate() {
                if let Some(c) = c {
                    fds.push(PollFd::writable(c.raw()));
                    owners.push(i);
                }
            }
            let wait = self
                .schedule
                .next_wake()
                .map_or(Duration::from_secs(1), |w| {
                    w.saturating_sub(self.start.elapsed())
                });
            poll(&mut fds, wait)?;
            if fds.first().is_some_and(PollFd::ready) {
                return Ok(());
            }
            for (fd, &i) in fds.iter().skip(1).zip(&owners) {
                if fd.ready() && self.connected(i) == Flow::Stop {
                    return Ok(());
                }
            }
        }
    }

    /// Times out the checks past their deadline, then starts those due.
    fn turn(&mut self, batch: &mut Vec<usize>) -> Flow {
        let now = self.start.elapsed();
        batch.clear();
        self.schedule.expired(now, batch);
        for &i in batch.iter() {
            if let Some(slot) = self.pending.get_mut(i) {
                *slot = None;
            }
            let timeout = self.schedule.timeout(i);
            if self.report(i, Outcome::Failed(Failure::Timeout(timeout))) == Flow::Stop {
                return Flow::Stop;
            }
        }
        batch.clear();
        self.schedule.start_due(now, batch);
        for &i in batch.iter() {
            let Some(probe) = self.probes.get(i) else {
                continue;
            };
            match Connecting::start(probe.addr) {
                Ok(c) => {
                    if let Some(slot) = self.pending.get_mut(i) {
                        *slot = Some(c);
                    }
                }
                Err(e) => {
                    self.schedule.done(i);
                    if self.report(i, Outcome::Failed(failure(&e))) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Check `i`'s socket polled ready: its connect ended.
    fn connected(&mut self, i: usize) -> Flow {
        let Some(c) = self.pending.get_mut(i).and_then(Option::take) else {
            return Flow::Continue;
        };
        self.schedule.done(i);
        let hello = self.probes.get(i).map_or(&[][..], |p| &p.hello);
        let outcome = match c.finish() {
            Err(e) => Outcome::Failed(failure(&e)),
            Ok(()) if hello.is_empty() => Outcome::Passed,
            Ok(()) => match c.send_all(hello) {
                Ok(()) => Outcome::Passed,
                Err(e) => Outcome::Failed(Failure::Error(format!(
                    "connected, but sending the PROXY header failed: {e}"
                ))),
            },
        };
        // Dropping the socket closes it: a FIN after the header.
        drop(c);
        self.report(i, outcome)
    }

    fn report(&mut self, i: usize, outcome: Outcome) -> Flow {
        let change = self.trackers.get_mut(i).and_then(|t| t.observe(&outcome));
        let ev = Event {
            target: i,
            outcome,
            change,
        };
        match self.events.send(ev) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

fn failure(e: &io::Error) -> Failure {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Failure::Refused,
        _ => Failure::Error(e.to_string()),
    }
}
