//! Read-ahead: the records a reader announced, fetched ahead of it with
//! coalesced ranged GETs and served from memory.
//!
//! [`Window::plan`] turns announced records (in reading order) into runs:
//! records of one pack that follow each other in it (gaps up to
//! [`MAX_GAP`]) share one GET of up to `max_run` bytes, even when records
//! of other packs come between them (a snapshot changed here and there
//! reads its new pack in between the old ones). Runs are started oldest first
//! while fewer than `in_flight` are being fetched and the bytes of runs
//! fetching or fetched and not yet read stay within `max_bytes`; a run is
//! dropped once each record planned in it has been read. Guarantees:
//! - Memory: started runs hold at most `max_bytes`, except that a reader
//!   who needs a run not yet started starts it at once (one run beyond the
//!   bound per waiting reader).
//! - Only a hint: [`Window::take`] answers `None` for a record no run holds
//!   (never announced, its fetch failed, or dropped) and the caller reads
//!   it as it would without read-ahead. Bytes are handed out exactly as
//!   the store sent them; the engine checks each chunk's BLAKE3.
//! - A reader that goes away does not pin memory: a run fetched and not
//!   read for [`STALE`] is dropped when room is needed, with the runs of
//!   the same announcement not started yet.
//!
//! The window does no I/O itself: `plan` and `take` return the runs to
//! fetch now, the caller fetches them and reports with `fetched`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bunker_store::PackId;
use bytes::Bytes;

/// Largest gap between two records that one GET still spans (the gap's
/// bytes are fetched and thrown away: cheaper than a second request).
pub(crate) const MAX_GAP: u64 = 256 << 10;
/// A fetched run nobody read for this long may be dropped.
pub(crate) const STALE: Duration = Duration::from_secs(30);

/// A run to fetch: bytes `range` of `pack`.
pub(crate) type Fetch = (PackId, Range<u64>);

pub(crate) struct Window {
    max_bytes: u64,
    max_run: u64,
    in_flight: usize,
    /// [`STALE`]; shorter in tests.
    stale: Duration,
    state: Mutex<State>,
    /// Signalled whenever a fetch ends.
    settled: Condvar,
}

#[derive(Default)]
struct State {
    /// Runs by (pack, first byte).
    runs: BTreeMap<(PackId, u64), Run>,
    /// Runs not started yet, oldest announcement first.
    planned: VecDeque<(PackId, u64)>,
    /// Bytes of the started runs.
    bytes: u64,
    fetching: usize,
    announcements: u64,
}

struct Run {
    end: u64,
    /// Planned reads of the run not done yet.
    reads_left: usize,
    /// The `plan` call that made it.
    announcement: u64,
    status: Status,
}

enum Status {
    Planned,
    Fetching,
    Ready { bytes: Bytes, since: Instant },
}

impl Window {
    /// A window of at most `max_bytes` (at least one run), GETs of at most
    /// `max_run` bytes, `in_flight` at once.
    pub(crate) fn new(max_bytes: u64, max_run: u64, in_flight: usize) -> Window {
        Window {
            max_bytes,
            max_run: max_run.max(1),
            in_flight: in_flight.max(1),
            stale: STALE,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans runs for `records` (pack, offset, length), to be read in this
    /// order; records `skip` says are at hand (the disk cache) are left
    /// out. `launch` is given the runs to fetch now.
    pub(crate) fn plan(
        &self,
        records: &[(PackId, u64, usize)],
        skip: impl Fn(PackId, u64, u64) -> bool,
        launch: &dyn Fn(Fetch),
    ) {
        let mut st = self.lock();
        st.announcements += 1;
        let announcement = st.announcements;
        // The run each pack's records are joining: a snapshot changed
        // here and there interleaves its new pack with the old ones.
        let mut open: HashMap<PackId, (PackId, u64)> = HashMap::new();
        for &(pack, offset, len) in records {
            let len = len as u64;
            if len == 0 {
                continue;
            }
            if let Some(run) = st.covering(pack, offset, len) {
                run.reads_left += 1;
                continue;
            }
            if let Some(key) = open.get(&pack) {
                if let Some(run) = st.runs.get_mut(key) {
                    let joins = offset >= key.1
                        && offset <= run.end + MAX_GAP
                        && (offset + len).max(run.end) - key.1 <= self.max_run;
                    if joins {
                        run.end = run.end.max(offset + len);
                        run.reads_left += 1;
                        continue;
                    }
                }
            }
            if skip(pack, offset, len) {
                continue;
            }
            let run = Run {
                end: offset + len,
                reads_left: 1,
                announcement,
                status: Status::Planned,
            };
            if st.add(pack, offset, run) {
                open.insert(pack, (pack, offset));
            }
        }
        self.start(&mut st, launch);
    }

    /// `len` bytes at `offset` of `pack`, if a run holds them; waits while
    /// the run is being fetched (and has it fetched first if it was not
    /// started: a reader ahead of the window).
    pub(crate) fn take(
        &self,
        pack: PackId,
        offset: u64,
        len: u64,
        launch: &dyn Fn(Fetch),
    ) -> Option<Bytes> {
        let mut st = self.lock();
        loop {
            let key = st.covering_key(pack, offset, len)?;
            let run = st.runs.get_mut(&key).expect("covering key is a run");
            match &run.status {
                Status::Planned => {
                    run.status = Status::Fetching;
                    let end = run.end;
                    st.planned.retain(|k| *k != key);
                    st.bytes += end - key.1;
                    st.fetching += 1;
                    // Only spawns: the fetch reports back on another thread.
                    launch((pack, key.1..end));
                }
                Status::Fetching => {
                    st = self.settled.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                Status::Ready { bytes, .. } => {
                    let from = (offset - key.1) as usize;
                    let out = bytes.slice(from..from + len as usize);
                    run.reads_left = run.reads_left.saturating_sub(1);
                    if run.reads_left == 0 {
                        let run = st.runs.remove(&key).expect("run present");
                        st.bytes -= run.end - key.1;
                        self.start(&mut st, launch);
                    }
                    return Some(out);
                }
            }
        }
    }

    /// The fetch of the run at `start` of `pack` ended with `bytes` (None:
    /// it failed, and the run's reads go their own way). `launch` is given
    /// the runs to fetch now.
    pub(crate) fn fetched(
        &self,
        pack: PackId,
        start: u64,
        bytes: Option<Bytes>,
        launch: &dyn Fn(Fetch),
    ) {
        let mut st = self.lock();
        st.settle(pack, start, bytes);
        self.start(&mut st, launch);
        drop(st);
        self.settled.notify_all();
    }

    /// The fetch of the run at `start` of `pack` ended without an answer
    /// and nothing can be launched (the runtime is going away): the run is
    /// dropped and no other is started.
    pub(crate) fn abandoned(&self, pack: PackId, start: u64) {
        self.lock().settle(pack, start, None);
        self.settled.notify_all();
    }

    /// Starts planned runs, oldest first, within the bounds. `launch` only
    /// spawns the fetch (it is called with the lock held).
    fn start(&self, st: &mut State, launch: &dyn Fn(Fetch)) {
        let mut expired = false;
        while st.fetching < self.in_flight {
            let Some(&key) = st.planned.front() else {
                break;
            };
            let Some(run) = st
                .runs
                .get(&key)
                .filter(|r| matches!(r.status, Status::Planned))
            else {
                st.planned.pop_front();
                continue;
            };
            let len = run.end - key.1;
            if st.bytes > 0 && st.bytes + len > self.max_bytes {
                if expired || !st.expire(self.stale) {
                    break;
                }
                expired = true;
                continue;
            }
            st.planned.pop_front();
            if let Some(run) = st.runs.get_mut(&key) {
                run.status = Status::Fetching;
            }
            st.bytes += len;
            st.fetching += 1;
            launch((key.0, key.1..key.1 + len));
        }
    }

    /// Bytes of started runs (fetching, or fetched and not read).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

impl State {
    fn settle(&mut self, pack: PackId, start: u64, bytes: Option<Bytes>) {
        self.fetching -= 1;
        let key = (pack, start);
        match (bytes, self.runs.get_mut(&key)) {
            (Some(b), Some(run)) if b.len() as u64 == run.end - start => {
                run.status = Status::Ready {
                    bytes: b,
                    since: Instant::now(),
                };
            }
            (_, Some(_)) => {
                let run = self.runs.remove(&key).expect("run present");
                self.bytes -= run.end - start;
            }
            (_, None) => {}
        }
    }

    fn covering_key(&self, pack: PackId, offset: u64, len: u64) -> Option<(PackId, u64)> {
        let (&key, run) = self.runs.range((pack, 0)..=(pack, offset)).next_back()?;
        (run.end >= offset + len).then_some(key)
    }

    fn covering(&mut self, pack: PackId, offset: u64, len: u64) -> Option<&mut Run> {
        let key = self.covering_key(pack, offset, len)?;
        self.runs.get_mut(&key)
    }

    /// Adds a planned run; false if a run starts at the same byte.
    fn add(&mut self, pack: PackId, start: u64, run: Run) -> bool {
        let key = (pack, start);
        if self.runs.contains_key(&key) {
            return false;
        }
        self.runs.insert(key, run);
        self.planned.push_back(key);
        true
    }

    /// Drops runs fetched and unread for `stale`, and the runs of the
    /// same announcements not started yet. True if any bytes came free.
    fn expire(&mut self, stale: Duration) -> bool {
        let now = Instant::now();
        let stale: Vec<((PackId, u64), u64)> = self
            .runs
            .iter()
            .filter(
                |(_, r)| matches!(r.status, Status::Ready { since, .. } if now - since >= stale),
            )
            .map(|(k, r)| (*k, r.announcement))
            .collect();
        if stale.is_empty() {
            return false;
        }
        for (key, _) in &stale {
            if let Some(run) = self.runs.remove(key) {
                self.bytes -= run.end - key.1;
            }
        }
        let gone: HashSet<u64> = stale.iter().map(|(_, a)| *a).collect();
        self.runs.retain(|_, r| {
            !(matches!(r.status, Status::Planned) && gone.contains(&r.announcement))
        });
        let runs = &self.runs;
        self.planned.retain(|k| runs.contains_key(k));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const P: PackId = PackId(7);
    const Q: PackId = PackId(8);

    fn object(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 253) as u8).collect()
    }

    /// Fetches are recorded, to be completed by the test.
    #[derive(Default)]
    struct Launched(RefCell<Vec<Fetch>>);

    impl Launched {
        fn launch(&self) -> impl Fn(Fetch) + '_ {
            |f| self.0.borrow_mut().push(f)
        }
        fn drain(&self) -> Vec<Fetch> {
            std::mem::take(&mut *self.0.borrow_mut())
        }
    }

    fn complete(w: &Window, fetches: Vec<Fetch>, obj: &[u8], l: &Launched) {
        for (pack, r) in fetches {
            let bytes = Bytes::copy_from_slice(&obj[r.start as usize..r.end as usize]);
            w.fetched(pack, r.start, Some(bytes), &l.launch());
        }
    }

    #[test]
    fn records_that_follow_each_other_share_a_get_up_to_the_run_size() {
        let w = Window::new(1 << 20, 1000, 8);
        let l = Launched::default();
        let records = [
            (P, 0, 300),
            (Q, 1200, 10), // another pack in between
            (P, 300, 300),
            (P, 700, 200), // a gap of 100 bytes: same run
            (P, 900, 300), // would make the run 1200 bytes: a new one
            (Q, 1210, 10),
            (Q, 2000 + MAX_GAP, 10), // beyond the gap
        ];
        w.plan(&records, |_, _, _| false, &l.launch());
        let f = l.drain();
        assert_eq!(
            f,
            vec![
                (P, 0..900),
                (Q, 1200..1220),
                (P, 900..1200),
                (Q, 2000 + MAX_GAP..2010 + MAX_GAP)
            ]
        );
        let obj = object(4000 + MAX_GAP as usize);
        complete(&w, f, &obj, &l);
        for &(pack, offset, len) in &records {
            let got = w.take(pack, offset, len as u64, &l.launch()).unwrap();
            assert_eq!(got, &obj[offset as usize..offset as usize + len]);
        }
        // Each run was dropped once its records were read.
        assert_eq!(w.bytes(), 0);
        assert_eq!(w.take(P, 0, 300, &l.launch()), None);
        assert!(l.drain().is_empty());
    }

    #[test]
    fn started_runs_stay_within_the_memory_bound() {
        let w = Window::new(2000, 1000, 8);
        let l = Launched::default();
        let records: Vec<_> = (0..10).map(|i| (P, i * 1000, 1000)).collect();
        let obj = object(10_000);
        w.plan(&records, |_, _, _| false, &l.launch());
        let mut read = 0;
        let mut started = l.drain();
        assert_eq!(started.len(), 2, "two runs of 1000 bytes fit");
        while read < records.len() {
            assert!(w.bytes() <= 2000);
            complete(&w, std::mem::take(&mut started), &obj, &l);
            let (pack, offset, len) = records[read];
            let got = w.take(pack, offset, len as u64, &l.launch()).unwrap();
            assert_eq!(got, &obj[offset as usize..offset as usize + 1000]);
            read += 1;
            // Each read makes room for one more run.
            started = l.drain();
            assert!(started.len() <= 1);
        }
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn a_failed_or_unannounced_read_goes_its_own_way() {
        let w = Window::new(1 << 20, 1 << 20, 8);
        let l = Launched::default();
        w.plan(&[(P, 0, 100), (Q, 0, 100)], |_, _, _| false, &l.launch());
        let f = l.drain();
        assert_eq!(f.len(), 2);
        w.fetched(P, 0, None, &l.launch());
        // Short bytes are a failure too.
        w.fetched(Q, 0, Some(Bytes::from_static(b"short")), &l.launch());
        assert_eq!(w.take(P, 0, 100, &l.launch()), None);
        assert_eq!(w.take(Q, 0, 100, &l.launch()), None);
        assert_eq!(w.take(P, 500, 100, &l.launch()), None);
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn records_in_the_cache_are_not_fetched() {
        let w = Window::new(1 << 20, 1 << 20, 8);
        let l = Launched::default();
        w.plan(
            &[(P, 0, 100), (Q, 0, 100)],
            |pack, _, _| pack == P,
            &l.launch(),
        );
        assert_eq!(l.drain(), vec![(Q, 0..100)]);
    }

    #[test]
    fn a_reader_ahead_of_the_window_fetches_its_run_and_waits_for_it() {
        let w = Window::new(100, 100, 1);
        let obj = object(1000);
        let (tx, rx) = crossbeam_channel::unbounded::<Fetch>();
        let launch = move |f: Fetch| tx.send(f).unwrap();
        // Only the first run fits; the reader wants the third.
        w.plan(
            &[(P, 0, 100), (P, 400, 100), (P, 800, 100)],
            |_, _, _| false,
            &launch,
        );
        std::thread::scope(|s| {
            // Stands for the runtime: completes each fetch it is given.
            let w = &w;
            let obj = &obj;
            s.spawn(move || {
                for (pack, r) in rx.iter().take(2) {
                    let b = Bytes::copy_from_slice(&obj[r.start as usize..r.end as usize]);
                    w.fetched(pack, r.start, Some(b), &|_| {});
                }
            });
            let got = w.take(P, 800, 100, &launch).unwrap();
            assert_eq!(got, &obj[800..900]);
        });
    }

    #[test]
    fn runs_nobody_reads_are_dropped_with_the_rest_of_their_announcement() {
        let mut w = Window::new(100, 100, 8);
        let l = Launched::default();
        let obj = object(1000);
        // A reader announces three runs, the first is fetched, and it goes.
        w.plan(
            &[(P, 0, 100), (P, 400, 100), (P, 800, 100)],
            |_, _, _| false,
            &l.launch(),
        );
        complete(&w, l.drain(), &obj, &l);
        assert_eq!(w.bytes(), 100);
        assert!(l.drain().is_empty(), "the window is full");
        // Time passes (no sleeping: the bound is lowered instead).
        w.stale = Duration::ZERO;
        // A new reader's run replaces it, not the gone reader's next one.
        w.plan(&[(Q, 0, 100)], |_, _, _| false, &l.launch());
        assert_eq!(l.drain(), vec![(Q, 0..100)]);
        assert_eq!(w.take(P, 400, 100, &l.launch()), None);
        assert!(l.drain().is_empty());
    }
}
