//! Randomized model test of the credit ledger (SPEC section 1).
//!
//! A plain-Rust model of the ledger's rules, written from the contract (it imports
//! nothing from the extension), runs the same random operations as a real database and
//! must agree after every step: success or the exact SQLSTATE, the returned ids,
//! `balance_after` and `replayed`, `billing.balance` of every customer, every grant's
//! `remaining`; `billing.verify()` is clean every 100 steps; `billing.balance_at` matches
//! balances the model recorded at past instants.
//!
//! Environment: `DATABASE_URL` (required), `MODEL_SEED` (replay a run; the seed is
//! printed), `MODEL_STEPS` (default 3000), `MODEL_NO_EXPIRY=1` (no expiring grants, holds
//! never lapse) or `=holds` (holds never lapse): isolates a failure from the expiry
//! machinery.
//!
//! Time is `billing.clock`, in microseconds after 2030-01-01 UTC; it only moves forward,
//! often to the exact instant something expires, one microsecond before or after it.
mod common;

use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::fmt;

const CUSTOMERS: [&str; 4] = ["m0", "m1", "m2", "m3"];
const GHOST: &str = "ghost"; // never granted anything: BL003
const SEC: i64 = 1_000_000;
const NEVER: i64 = i64::MAX;

// ---------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------

/// Where credits sit: a grant (index in its customer's grants), the overdraft account
/// (negative = debt), or a hold's borrowing beyond the grants.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Acct {
    Grant(usize),
    Debt,
    Borrow,
}

#[derive(Clone, Debug)]
struct MGrant {
    id: String,
    remaining: i64,
    expires: i64, // NEVER when it does not expire
    priority: i32,
}

#[derive(Clone, Debug, PartialEq)]
enum HoldState {
    Active,
    Settled { actual: i64, entry: String, balance_after: i64 },
    Released { entry: String, balance_after: i64 },
    Lapsed,
}

#[derive(Clone, Debug)]
struct MHold {
    id: String,
    cust: usize,
    amount: i64,
    /// Where the held credits came from, in allocation order.
    lines: Vec<(Acct, i64)>,
    expires: i64,
    state: HoldState,
}

#[derive(Clone, Debug, PartialEq)]
enum KeyRec {
    Grant { amount: i64, source: String, expires: Option<i64>, priority: i32, id: String },
    Debit { amount: i64, meta: String, entry: String, balance_after: i64 },
    Hold { amount: i64, ttl: i64, rid: String },
    Refund { of: String, requested: Option<i64>, entry: String, balance_after: i64 },
}

#[derive(Clone, Debug, Default)]
struct MCust {
    exists: bool,
    /// The grants' remaining credits as the database stores them: written down when an
    /// operation on the customer catches up, not by the mere passing of time.
    grants: Vec<MGrant>,
    od: i64,
    limit: i64,
    frozen: bool,
    keys: HashMap<String, KeyRec>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum EKind {
    Debit,
    Settle,
    Other, // release, refund: not refundable
}

#[derive(Clone, Debug)]
struct MEntry {
    id: String,
    cust: usize,
    kind: EKind,
    /// What the entry consumed, in consumption order, less what was refunded since.
    refundable: Vec<(Acct, i64)>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    now: i64,
    custs: Vec<MCust>,
    holds: Vec<MHold>,
    entries: Vec<MEntry>,
}

/// What the database returned for one operation.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Id(String),
    Entry { entry: String, balance_after: i64, replayed: bool },
    Time(i64),
    Unit,
}

type Act = Result<Out, String>; // Err: the SQLSTATE, or a description of a non-server error

/// `Ok(true)`: the operation succeeded and changed the model; `Ok(false)`: it failed as
/// expected (nothing changes); `Err`: the database disagrees.
type Step = Result<bool, String>;

fn want_err(act: &Act, code: &str) -> Step {
    match act {
        Err(c) if c == code => Ok(false),
        other => Err(format!("expected SQLSTATE {code}, got {other:?}")),
    }
}

fn want_new_entry(act: &Act, balance_after: i64) -> Result<String, String> {
    match act {
        Ok(Out::Entry { entry, balance_after: b, replayed: false }) if *b == balance_after => Ok(entry.clone()),
        other => Err(format!("expected a new entry with balance_after {balance_after}, got {other:?}")),
    }
}

fn want_replay(act: &Act, entry: &str, balance_after: i64) -> Step {
    match act {
        Ok(Out::Entry { entry: e, balance_after: b, replayed: true }) if e == entry && *b == balance_after => Ok(false),
        other => Err(format!("expected the replay of entry {entry} (balance_after {balance_after}, replayed true), got {other:?}")),
    }
}

fn want_new_id(act: &Act) -> Result<String, String> {
    match act {
        Ok(Out::Id(id)) => Ok(id.clone()),
        other => Err(format!("expected a new id, got {other:?}")),
    }
}

fn want_id(act: &Act, id: &str) -> Step {
    match act {
        Ok(Out::Id(x)) if x == id => Ok(false),
        other => Err(format!("expected the replayed id {id}, got {other:?}")),
    }
}

fn key_ok(k: &Option<String>) -> bool {
    matches!(k, Some(k) if !k.is_empty() && k.len() <= 255)
}

impl Model {
    fn new() -> Model {
        Model { now: 0, custs: vec![MCust::default(); CUSTOMERS.len()], ..Default::default() }
    }

    fn cust(&self, name: &str) -> Option<usize> {
        CUSTOMERS.iter().position(|c| *c == name).filter(|&i| self.custs[i].exists)
    }

    /// Writes down what expired by now for one customer: holds past their ttl give their
    /// credits back to grants still live at the hold's expiry (credits returned to a
    /// grant that had expired by then expire with it); grants past expiry lose the rest.
    fn catch_up(&mut self, ci: usize) {
        let now = self.now;
        for h in self.holds.iter_mut().filter(|h| h.cust == ci && h.state == HoldState::Active && h.expires <= now) {
            for &(a, x) in &h.lines {
                if let Acct::Grant(gi) = a {
                    let g = &mut self.custs[ci].grants[gi];
                    if g.expires > h.expires {
                        g.remaining += x;
                    }
                }
            }
            h.state = HoldState::Lapsed;
        }
        for g in self.custs[ci].grants.iter_mut().filter(|g| g.expires <= now) {
            g.remaining = 0;
        }
    }

    /// Spendable now: live grants + overdraft account - what active holds borrowed.
    fn balance(&self, ci: usize) -> i64 {
        self.balance_at(ci, self.now)
    }

    /// The balance at `t >= now` if nothing else happens until then.
    fn balance_at(&self, ci: usize, t: i64) -> i64 {
        let mut m = self.clone();
        m.now = t;
        m.catch_up(ci);
        let c = &m.custs[ci];
        let grants: i64 = c.grants.iter().filter(|g| g.expires > t).map(|g| g.remaining).sum();
        let borrowed: i64 = m
            .holds
            .iter()
            .filter(|h| h.cust == ci && h.state == HoldState::Active)
            .flat_map(|h| h.lines.iter())
            .filter(|l| l.0 == Acct::Borrow)
            .map(|l| l.1)
            .sum();
        grants + c.od - borrowed
    }

    /// What taking `amount` draws from (customer caught up): live grants soonest expiry
    /// first (never-expiring last), then higher priority, then oldest; the rest from
    /// `rest` within the overdraft limit. `None`: insufficient (BL001).
    fn allocate(&self, ci: usize, amount: i64, rest: Acct) -> Option<Vec<(Acct, i64)>> {
        let c = &self.custs[ci];
        if amount > self.balance(ci) + c.limit {
            return None;
        }
        let mut order: Vec<usize> = (0..c.grants.len()).filter(|&i| c.grants[i].expires > self.now && c.grants[i].remaining > 0).collect();
        order.sort_by_key(|&i| (c.grants[i].expires, std::cmp::Reverse(c.grants[i].priority), i));
        let mut need = amount;
        let mut lines = vec![];
        for i in order {
            if need == 0 {
                break;
            }
            let x = need.min(c.grants[i].remaining);
            lines.push((Acct::Grant(i), x));
            need -= x;
        }
        if need > 0 {
            lines.push((rest, need));
        }
        Some(lines)
    }

    fn take(&mut self, ci: usize, lines: &[(Acct, i64)]) {
        for &(a, x) in lines {
            match a {
                Acct::Grant(i) => self.custs[ci].grants[i].remaining -= x,
                Acct::Debt => self.custs[ci].od -= x,
                Acct::Borrow => {}
            }
        }
    }

    /// Credits coming back: to a live grant, to the overdraft account; credits coming back
    /// to an expired grant are recorded and expire at once; borrowing just ends.
    fn give_back(&mut self, ci: usize, a: Acct, x: i64) {
        let now = self.now;
        match a {
            Acct::Grant(i) => {
                let g = &mut self.custs[ci].grants[i];
                if g.expires > now {
                    g.remaining += x;
                }
            }
            Acct::Debt => self.custs[ci].od += x,
            Acct::Borrow => {}
        }
    }

    fn hold_idx(&self, rid: &str) -> Option<usize> {
        self.holds.iter().position(|h| h.id == rid)
    }

    fn exec(&mut self, op: &Op, act: &Act) -> Step {
        match op {
            Op::Grant { c, amount, key, source, expires, priority } => self.grant(c, *amount, key, source, *expires, *priority, act),
            Op::Debit { c, amount, key, meta } => self.debit(c, *amount, key, meta, act),
            Op::Reserve { c, amount, key, ttl } => self.reserve(c, *amount, key, *ttl, act),
            Op::Settle { rid, actual } => self.settle(rid, *actual, act),
            Op::Release { rid } => self.release(rid, act),
            Op::Extend { rid, ttl } => self.extend(rid, *ttl, act),
            Op::Refund { entry, amount, key } => self.refund(entry, *amount, key, act),
            Op::SetOverdraft { c, limit } => {
                if *limit < 0 {
                    return want_err(act, "22023");
                }
                let Some(ci) = self.cust(c) else { return want_err(act, "BL003") };
                self.custs[ci].limit = *limit;
                unit(act)
            }
            Op::SetFrozen { c, frozen } => {
                let Some(ci) = self.cust(c) else { return want_err(act, "BL003") };
                self.custs[ci].frozen = *frozen;
                unit(act)
            }
            Op::Maintenance => {
                for ci in 0..self.custs.len() {
                    if self.custs[ci].exists {
                        self.catch_up(ci);
                    }
                }
                unit(act)
            }
            Op::Clock(t) => {
                assert!(*t >= self.now);
                self.now = *t;
                unit(act)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(&mut self, c: &str, amount: Option<i64>, key: &Option<String>, source: &str, expires: Option<i64>, priority: i32, act: &Act) -> Step {
        if c.is_empty() || !matches!(amount, Some(a) if a > 0) || !key_ok(key) || expires.is_some_and(|e| e <= self.now) {
            return want_err(act, "22023");
        }
        let (amount, key) = (amount.unwrap(), key.clone().unwrap());
        let ci = CUSTOMERS.iter().position(|x| *x == c).expect("grants go to model customers");
        if let Some(k) = self.custs[ci].keys.get(&key) {
            return match k {
                KeyRec::Grant { amount: a, source: s, expires: e, priority: p, id }
                    if *a == amount && s == source && *e == expires && *p == priority =>
                {
                    want_id(act, id)
                }
                _ => want_err(act, "BL002"),
            };
        }
        let id = want_new_id(act)?;
        self.custs[ci].exists = true;
        self.catch_up(ci);
        let cu = &mut self.custs[ci];
        let repay = amount.min((-cu.od).max(0));
        cu.od += repay;
        cu.grants.push(MGrant { id: id.clone(), remaining: amount - repay, expires: expires.unwrap_or(NEVER), priority });
        cu.keys.insert(key, KeyRec::Grant { amount, source: source.to_string(), expires, priority, id });
        Ok(true)
    }

    fn debit(&mut self, c: &str, amount: Option<i64>, key: &Option<String>, meta: &str, act: &Act) -> Step {
        if c.is_empty() || !matches!(amount, Some(a) if a > 0) || !key_ok(key) {
            return want_err(act, "22023");
        }
        let (amount, key) = (amount.unwrap(), key.clone().unwrap());
        let Some(ci) = self.cust(c) else { return want_err(act, "BL003") };
        if let Some(k) = self.custs[ci].keys.get(&key) {
            return match k {
                KeyRec::Debit { amount: a, meta: m, entry, balance_after } if *a == amount && m == meta => want_replay(act, entry, *balance_after),
                _ => want_err(act, "BL002"),
            };
        }
        if self.custs[ci].frozen {
            return want_err(act, "BL004");
        }
        self.catch_up(ci);
        let Some(lines) = self.allocate(ci, amount, Acct::Debt) else { return want_err(act, "BL001") };
        self.take(ci, &lines);
        let balance_after = self.balance(ci);
        let entry = want_new_entry(act, balance_after)?;
        self.entries.push(MEntry { id: entry.clone(), cust: ci, kind: EKind::Debit, refundable: lines });
        self.custs[ci].keys.insert(key, KeyRec::Debit { amount, meta: meta.to_string(), entry, balance_after });
        Ok(true)
    }

    fn reserve(&mut self, c: &str, amount: Option<i64>, key: &Option<String>, ttl: i64, act: &Act) -> Step {
        if c.is_empty() || !matches!(amount, Some(a) if a > 0) || !key_ok(key) || ttl <= 0 {
            return want_err(act, "22023");
        }
        let (amount, key) = (amount.unwrap(), key.clone().unwrap());
        let Some(ci) = self.cust(c) else { return want_err(act, "BL003") };
        if let Some(k) = self.custs[ci].keys.get(&key) {
            return match k {
                KeyRec::Hold { amount: a, ttl: t, rid } if *a == amount && *t == ttl => want_id(act, rid),
                _ => want_err(act, "BL002"),
            };
        }
        if self.custs[ci].frozen {
            return want_err(act, "BL004");
        }
        self.catch_up(ci);
        let Some(lines) = self.allocate(ci, amount, Acct::Borrow) else { return want_err(act, "BL001") };
        self.take(ci, &lines);
        let rid = want_new_id(act)?;
        self.holds.push(MHold { id: rid.clone(), cust: ci, amount, lines, expires: self.now + ttl, state: HoldState::Active });
        self.custs[ci].keys.insert(key, KeyRec::Hold { amount, ttl, rid });
        Ok(true)
    }

    /// The checks settle, release and extend share: the hold must be active and not past
    /// its ttl. `Err(code)` otherwise.
    fn open_hold(&self, hi: usize) -> Result<(), &'static str> {
        let h = &self.holds[hi];
        if h.state != HoldState::Active || h.expires <= self.now {
            return Err("BL005");
        }
        Ok(())
    }

    fn settle(&mut self, rid: &str, actual: Option<i64>, act: &Act) -> Step {
        let Some(actual) = actual.filter(|a| *a >= 0) else { return want_err(act, "22023") };
        let Some(hi) = self.hold_idx(rid) else { return want_err(act, "BL003") };
        if let HoldState::Settled { actual: a, entry, balance_after } = &self.holds[hi].state {
            return if *a == actual { want_replay(act, entry, *balance_after) } else { want_err(act, "BL005") };
        }
        if let Err(code) = self.open_hold(hi) {
            return want_err(act, code);
        }
        let ci = self.holds[hi].cust;
        self.catch_up(ci);
        let h = self.holds[hi].clone();
        // The first `actual` credits of the hold, in allocation order, are consumed.
        let (mut consumed, mut returned, mut left) = (vec![], vec![], actual);
        for &(a, x) in &h.lines {
            let c = left.min(x);
            if c > 0 {
                consumed.push((a, c));
            }
            if x > c {
                returned.push((a, x - c));
            }
            left -= c;
        }
        let mut extra = vec![];
        if left > 0 {
            if self.custs[ci].frozen {
                return want_err(act, "BL004");
            }
            match self.allocate(ci, left, Acct::Debt) {
                Some(l) => extra = l,
                None => return want_err(act, "BL001"),
            }
        }
        for &(a, x) in &returned {
            self.give_back(ci, a, x);
        }
        // What the hold borrowed and consumed becomes debt.
        let borrowed: i64 = consumed.iter().filter(|l| l.0 == Acct::Borrow).map(|l| l.1).sum();
        self.custs[ci].od -= borrowed;
        self.take(ci, &extra);
        self.holds[hi].state = HoldState::Lapsed; // out of the balance while computing it
        let balance_after = self.balance(ci);
        let entry = want_new_entry(act, balance_after)?;
        let mut provenance: Vec<(Acct, i64)> = consumed.iter().map(|&(a, x)| (if a == Acct::Borrow { Acct::Debt } else { a }, x)).collect();
        provenance.extend(extra);
        self.entries.push(MEntry { id: entry.clone(), cust: ci, kind: EKind::Settle, refundable: provenance });
        self.holds[hi].state = HoldState::Settled { actual, entry, balance_after };
        Ok(true)
    }

    fn release(&mut self, rid: &str, act: &Act) -> Step {
        let Some(hi) = self.hold_idx(rid) else { return want_err(act, "BL003") };
        if let HoldState::Released { entry, balance_after } = &self.holds[hi].state {
            return want_replay(act, entry, *balance_after);
        }
        if let Err(code) = self.open_hold(hi) {
            return want_err(act, code);
        }
        let ci = self.holds[hi].cust;
        self.catch_up(ci);
        for (a, x) in self.holds[hi].lines.clone() {
            self.give_back(ci, a, x);
        }
        self.holds[hi].state = HoldState::Lapsed; // out of the balance while computing it
        let balance_after = self.balance(ci);
        let entry = want_new_entry(act, balance_after)?;
        self.entries.push(MEntry { id: entry.clone(), cust: ci, kind: EKind::Other, refundable: vec![] });
        self.holds[hi].state = HoldState::Released { entry, balance_after };
        Ok(true)
    }

    fn extend(&mut self, rid: &str, ttl: i64, act: &Act) -> Step {
        if ttl <= 0 {
            return want_err(act, "22023");
        }
        let Some(hi) = self.hold_idx(rid) else { return want_err(act, "BL003") };
        if let Err(code) = self.open_hold(hi) {
            return want_err(act, code);
        }
        let ci = self.holds[hi].cust;
        self.catch_up(ci);
        let new = self.holds[hi].expires.max(self.now + ttl);
        match act {
            Ok(Out::Time(t)) if *t == new => {}
            other => return Err(format!("expected the hold to expire at {} ({new}), got {other:?}", ts(new))),
        }
        self.holds[hi].expires = new;
        Ok(true)
    }

    fn refund(&mut self, entry: &str, amount: Option<i64>, key: &Option<String>, act: &Act) -> Step {
        let Some(ei) = self.entries.iter().position(|e| e.id == entry) else { return want_err(act, "BL003") };
        let ci = self.entries[ei].cust;
        if self.entries[ei].kind == EKind::Other || amount.is_some_and(|a| a <= 0) || (key.is_some() && !key_ok(key)) {
            return want_err(act, "22023");
        }
        // Without a key, the refund is keyed by what it asks for.
        let key = key.clone().unwrap_or_else(|| format!("refund:{entry}:{}", amount.map_or("all".into(), |a| a.to_string())));
        if let Some(k) = self.custs[ci].keys.get(&key) {
            return match k {
                KeyRec::Refund { of, requested, entry: e, balance_after } if of == entry && *requested == amount => {
                    want_replay(act, e, *balance_after)
                }
                _ => want_err(act, "BL002"),
            };
        }
        let refundable: i64 = self.entries[ei].refundable.iter().map(|l| l.1).sum();
        let want = amount.unwrap_or(refundable);
        if want > refundable || want <= 0 {
            return want_err(act, "22023");
        }
        self.catch_up(ci);
        // Last consumed, first returned.
        let mut need = want;
        let mut back = vec![];
        for l in self.entries[ei].refundable.iter_mut().rev() {
            let t = need.min(l.1);
            if t > 0 {
                l.1 -= t;
                need -= t;
                back.push((l.0, t));
            }
        }
        for (a, t) in back {
            self.give_back(ci, a, t);
        }
        let balance_after = self.balance(ci);
        let e = want_new_entry(act, balance_after)?;
        self.entries.push(MEntry { id: e.clone(), cust: ci, kind: EKind::Other, refundable: vec![] });
        self.custs[ci].keys.insert(key, KeyRec::Refund { of: entry.to_string(), requested: amount, entry: e, balance_after });
        Ok(true)
    }
}

fn unit(act: &Act) -> Step {
    match act {
        Ok(Out::Unit) => Ok(true),
        other => Err(format!("expected success, got {other:?}")),
    }
}

// ---------------------------------------------------------------------------------
// Operations and how the database runs them
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Grant { c: String, amount: Option<i64>, key: Option<String>, source: String, expires: Option<i64>, priority: i32 },
    Debit { c: String, amount: Option<i64>, key: Option<String>, meta: String },
    Reserve { c: String, amount: Option<i64>, key: Option<String>, ttl: i64 },
    Settle { rid: String, actual: Option<i64> },
    Release { rid: String },
    Extend { rid: String, ttl: i64 },
    Refund { entry: String, amount: Option<i64>, key: Option<String> },
    SetOverdraft { c: String, limit: i64 },
    SetFrozen { c: String, frozen: bool },
    Maintenance,
    Clock(i64),
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Grant { .. } => "grant",
            Op::Debit { .. } => "debit",
            Op::Reserve { .. } => "reserve",
            Op::Settle { .. } => "settle",
            Op::Release { .. } => "release",
            Op::Extend { .. } => "extend",
            Op::Refund { .. } => "refund",
            Op::SetOverdraft { .. } => "set_overdraft",
            Op::SetFrozen { .. } => "set_frozen",
            Op::Maintenance => "maintenance",
            Op::Clock(_) => "clock",
        }
    }
}

fn short(k: &Option<String>) -> String {
    match k {
        Some(k) if k.len() > 20 => format!("<{} bytes>", k.len()),
        Some(k) => format!("{k:?}"),
        None => "NULL".into(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Grant { c, amount, key, source, expires, priority } => {
                write!(f, "grant({c}, {amount:?}, {}, {source}, expires {}, priority {priority})", short(key), expires.map_or("never".into(), ts))
            }
            Op::Debit { c, amount, key, meta } => write!(f, "debit({c}, {amount:?}, {}, {meta})", short(key)),
            Op::Reserve { c, amount, key, ttl } => write!(f, "reserve({c}, {amount:?}, {}, {ttl} us)", short(key)),
            Op::Settle { rid, actual } => write!(f, "settle({rid}, {actual:?})"),
            Op::Release { rid } => write!(f, "release({rid})"),
            Op::Extend { rid, ttl } => write!(f, "extend({rid}, {ttl} us)"),
            Op::Refund { entry, amount, key } => write!(f, "refund({entry}, {amount:?}, {})", short(key)),
            Op::SetOverdraft { c, limit } => write!(f, "set_overdraft({c}, {limit})"),
            Op::SetFrozen { c, frozen } => write!(f, "set_frozen({c}, {frozen})"),
            Op::Maintenance => write!(f, "maintenance()"),
            Op::Clock(t) => write!(f, "clock '{}' (SET LOCAL in each operation's transaction)", ts(*t)),
        }
    }
}

fn interval(us: i64) -> String {
    format!("{us} microseconds")
}

fn error_of(e: postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_string(),
        None => format!("client error: {e}"),
    }
}

fn entry_row(r: Result<postgres::Row, postgres::Error>) -> Act {
    let r = r.map_err(error_of)?;
    Ok(Out::Entry { entry: r.get(0), balance_after: r.get(1), replayed: r.get(2) })
}

fn id_row(r: Result<postgres::Row, postgres::Error>) -> Act {
    let r = r.map_err(error_of)?;
    r.get::<_, Option<String>>(0).map(Out::Id).ok_or_else(|| "NULL without an error".to_string())
}

/// Runs `op` in a transaction of its own at the model's `now` (`billing.clock` holds for
/// one transaction): committed if it succeeded. A clock step runs nothing: the next
/// operations' transactions take the new instant.
fn run(db: &mut Client, now: i64, op: &Op) -> Act {
    if let Op::Clock(_) = op {
        return Ok(Out::Unit);
    }
    let mut tx = at(db, now);
    let act = run_in(&mut tx, op);
    if act.is_ok() {
        tx.commit().map_err(error_of)?;
    }
    act
}

fn run_in(db: &mut postgres::Transaction<'_>, op: &Op) -> Act {
    match op {
        Op::Grant { c, amount, key, source, expires, priority } => id_row(db.query_one(
            "SELECT billing.grant($1, $2, $3, $4, $5::text::timestamptz, $6)::text",
            &[c, amount, key, source, &expires.map(ts), priority],
        )),
        Op::Debit { c, amount, key, meta } => entry_row(
            db.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.debit($1, $2, $3, $4::text::jsonb)", &[c, amount, key, meta]),
        ),
        Op::Reserve { c, amount, key, ttl } => {
            id_row(db.query_one("SELECT billing.reserve($1, $2, $3, $4::text::interval)::text", &[c, amount, key, &interval(*ttl)]))
        }
        Op::Settle { rid, actual } => {
            entry_row(db.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.settle($1::text::uuid, $2)", &[rid, actual]))
        }
        Op::Release { rid } => entry_row(db.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.release($1::text::uuid)", &[rid])),
        Op::Extend { rid, ttl } => {
            let sql = format!("SELECT {}", micros_sql("billing.extend($1::text::uuid, $2::text::interval)"));
            db.query_one(&sql, &[rid, &interval(*ttl)]).map(|r| Out::Time(r.get(0))).map_err(error_of)
        }
        Op::Refund { entry, amount, key } => entry_row(
            db.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.refund($1::text::uuid, $2, $3)", &[entry, amount, key]),
        ),
        Op::SetOverdraft { c, limit } => db.execute("SELECT billing.set_overdraft($1, $2)", &[c, limit]).map(|_| Out::Unit).map_err(error_of),
        Op::SetFrozen { c, frozen } => db.execute("SELECT billing.set_frozen($1, $2)", &[c, frozen]).map(|_| Out::Unit).map_err(error_of),
        Op::Maintenance => db.execute("SELECT billing.maintenance()", &[]).map(|_| Out::Unit).map_err(error_of),
        Op::Clock(_) => Ok(Out::Unit),
    }
}

// ---------------------------------------------------------------------------------
// Random operations
// ---------------------------------------------------------------------------------

struct Gen {
    rng: Rng,
    /// MODEL_NO_EXPIRY: grants never expire ("1") and holds never lapse ("1", "holds").
    no_expiry: bool,
    no_lapse: bool,
    /// Successful keyed operations, to replay with the same or different arguments.
    keyed: Vec<Op>,
    n: u64,
}

impl Gen {
    fn key(&mut self) -> Option<String> {
        self.n += 1;
        Some(format!("k{}", self.n))
    }

    fn existing(&mut self, m: &Model) -> Option<String> {
        let e: Vec<&str> = CUSTOMERS.iter().enumerate().filter(|(i, _)| m.custs[*i].exists).map(|(_, c)| *c).collect();
        if e.is_empty() {
            None
        } else {
            Some(self.rng.pick(&e).to_string())
        }
    }

    /// Mostly customers that exist; now and then one that does not (yet).
    fn customer(&mut self, m: &Model) -> String {
        if self.rng.pct(92) {
            if let Some(c) = self.existing(m) {
                return c;
            }
        }
        self.rng.pick(&CUSTOMERS).to_string()
    }

    fn ttl(&mut self) -> i64 {
        if self.no_lapse {
            return 1_000_000 * SEC;
        }
        self.rng.range(1, 900) * SEC + if self.rng.pct(30) { self.rng.range(1, SEC - 1) } else { 0 }
    }

    fn hold(&mut self, m: &Model) -> Option<String> {
        if m.holds.is_empty() {
            return None;
        }
        // Prefer recent holds (more likely active), sometimes any.
        let n = m.holds.len();
        let i = if self.rng.pct(70) { n - 1 - self.rng.below(n.min(6)) } else { self.rng.below(n) };
        Some(m.holds[i].id.clone())
    }

    fn grant(&mut self, m: &Model) -> Op {
        let c = self.rng.pick(&CUSTOMERS).to_string();
        let expires = if self.no_expiry || self.rng.pct(40) {
            None
        } else if self.rng.pct(5) {
            Some(m.now + 1) // expires one microsecond from now
        } else {
            Some(m.now + self.rng.range(1, 1200) * SEC + if self.rng.pct(30) { self.rng.range(0, SEC - 1) } else { 0 })
        };
        let source = self.rng.pick(&["manual", "promo", "purchase"]).to_string();
        Op::Grant { c, amount: Some(self.rng.range(1, 300)), key: self.key(), source, expires, priority: *self.rng.pick(&[0, 0, 1, 5, -1]) }
    }

    fn meta(&mut self) -> String {
        self.rng.pick(&["{}", "{}", "{\"n\": 1}", "{\"n\": 2}"]).to_string()
    }

    fn clock(&mut self, m: &Model) -> Op {
        let mut events: Vec<i64> = m
            .custs
            .iter()
            .flat_map(|c| c.grants.iter().map(|g| g.expires))
            .chain(m.holds.iter().filter(|h| h.state == HoldState::Active && !self.no_lapse).map(|h| h.expires))
            .filter(|&e| e > m.now && e != NEVER)
            .collect();
        if self.no_expiry {
            events.clear();
        }
        let t = if !events.is_empty() && self.rng.pct(60) {
            events.sort();
            let e = events[self.rng.below(events.len().min(4))]; // one of the next few
            match self.rng.below(4) {
                0 => e - 1,
                1 => e + 1,
                _ => e, // the exact instant
            }
        } else {
            m.now + self.rng.range(1, 300) * SEC + self.rng.range(0, SEC - 1)
        };
        Op::Clock(t.max(m.now))
    }

    fn refundable(&mut self, m: &Model) -> Option<(String, i64)> {
        let es: Vec<&MEntry> = m.entries.iter().filter(|e| e.kind != EKind::Other).collect();
        if es.is_empty() {
            return None;
        }
        let e = es[if self.rng.pct(60) { es.len() - 1 - self.rng.below(es.len().min(8)) } else { self.rng.below(es.len()) }];
        Some((e.id.clone(), e.refundable.iter().map(|l| l.1).sum()))
    }

    /// The same operation again, or with one argument changed.
    fn replay(&mut self, m: &Model) -> Option<Op> {
        if self.keyed.is_empty() {
            return None;
        }
        let n = self.keyed.len();
        let mut op = self.keyed[if self.rng.pct(50) { n - 1 - self.rng.below(n.min(10)) } else { self.rng.below(n) }].clone();
        if let Op::Grant { expires: Some(e), .. } = op {
            if e <= m.now {
                // The grant's expires_at is checked before its key: such a retry is a 22023,
                // not a replay (see the report). Not generated.
                return None;
            }
        }
        if self.rng.pct(50) {
            return Some(op);
        }
        match &mut op {
            Op::Grant { amount, source, priority, expires, .. } => match self.rng.below(4) {
                0 => *amount = amount.map(|a| a + 1),
                1 => *source = format!("{source}-x"),
                2 => *priority += 1,
                _ => *expires = if expires.is_some() { None } else { Some(m.now + 3600 * SEC) },
            },
            Op::Debit { c, amount, key, meta } => match self.rng.below(4) {
                0 => *amount = amount.map(|a| a + 1),
                1 => *meta = if meta == "{}" { "{\"n\": 9}".into() } else { "{}".into() },
                // The same key as a hold: different arguments.
                2 => return Some(Op::Reserve { c: c.clone(), amount: *amount, key: key.clone(), ttl: 60 * SEC }),
                // The same key for another customer: keys are per customer, a fresh debit.
                _ => *c = self.rng.pick(&CUSTOMERS).to_string(),
            },
            Op::Reserve { c, amount, key, ttl } => match self.rng.below(3) {
                0 => *amount = amount.map(|a| a + 1),
                1 => *ttl += SEC,
                _ => return Some(Op::Debit { c: c.clone(), amount: *amount, key: key.clone(), meta: "{}".into() }),
            },
            Op::Refund { amount, key, .. } => match self.rng.below(3) {
                0 => *amount = if amount.is_some() { None } else { Some(1) },
                1 => *amount = amount.map(|a| a + 1),
                _ => *key = if key.is_some() { None } else { self.key() },
            },
            _ => {}
        }
        Some(op)
    }

    fn invalid(&mut self, m: &Model) -> Op {
        let c = self.customer(m);
        let long = "é".repeat(128); // 256 bytes, 128 characters
        match self.rng.below(14) {
            0 => Op::Debit { c, amount: Some(0), key: self.key(), meta: "{}".into() },
            1 => Op::Debit { c, amount: Some(-self.rng.range(1, 50)), key: self.key(), meta: "{}".into() },
            2 => Op::Debit { c, amount: None, key: self.key(), meta: "{}".into() },
            3 => Op::Debit { c, amount: Some(1), key: Some(String::new()), meta: "{}".into() },
            4 => Op::Debit { c, amount: Some(1), key: Some(long), meta: "{}".into() },
            // 255 bytes is still a valid key
            5 => Op::Debit { c, amount: Some(1), key: Some(format!("{}{}", "é".repeat(127), self.n)[..255].to_string()), meta: "{}".into() },
            6 => Op::Debit { c: GHOST.into(), amount: Some(1), key: self.key(), meta: "{}".into() },
            7 => Op::Grant {
                c,
                amount: Some(10),
                key: self.key(),
                source: "manual".into(),
                expires: Some(m.now - self.rng.range(0, 1) * SEC),
                priority: 0,
            },
            8 => Op::Reserve { c, amount: Some(5), key: self.key(), ttl: -self.rng.range(0, 1) * SEC },
            9 => Op::Settle { rid: self.hold(m).unwrap_or_else(|| unknown_uuid(1)), actual: Some(-1) },
            10 => Op::Settle { rid: unknown_uuid(self.n), actual: Some(1) },
            11 => Op::Refund { entry: unknown_uuid(self.n), amount: None, key: None },
            12 => match m.entries.iter().rev().find(|e| e.kind == EKind::Other) {
                // a release or refund entry cannot be refunded
                Some(e) => Op::Refund { entry: e.id.clone(), amount: None, key: self.key() },
                None => Op::Release { rid: unknown_uuid(self.n) },
            },
            _ => Op::Grant { c: String::new(), amount: Some(1), key: self.key(), source: "manual".into(), expires: None, priority: 0 },
        }
    }

    fn next(&mut self, m: &Model) -> Op {
        loop {
            let r = self.rng.below(100);
            let op = match r {
                0..=12 => Some(self.grant(m)),
                13..=30 => Some(Op::Debit { c: self.customer(m), amount: Some(self.rng.range(1, 120)), key: self.key(), meta: self.meta() }),
                31..=40 => Some(Op::Reserve { c: self.customer(m), amount: Some(self.rng.range(1, 150)), key: self.key(), ttl: self.ttl() }),
                41..=50 => self.hold(m).map(|rid| {
                    let h = &m.holds[m.hold_idx(&rid).unwrap()];
                    let actual = match self.rng.below(6) {
                        0 => 0,
                        1 => h.amount,
                        2 => h.amount + self.rng.range(1, 60),
                        3 => match &h.state {
                            HoldState::Settled { actual, .. } => *actual, // a replay
                            _ => self.rng.range(0, h.amount),
                        },
                        _ => self.rng.range(0, h.amount),
                    };
                    Op::Settle { rid, actual: Some(actual) }
                }),
                51..=55 => self.hold(m).map(|rid| Op::Release { rid }),
                56..=59 => self.hold(m).map(|rid| Op::Extend { rid, ttl: self.ttl() }),
                60..=68 => self.refundable(m).map(|(entry, left)| {
                    let amount = match self.rng.below(5) {
                        0 | 1 => None,
                        2 => Some(left + 1),
                        _ => Some(self.rng.range(1, left.max(1))),
                    };
                    let key = if self.rng.pct(50) { self.key() } else { None };
                    Op::Refund { entry, amount, key }
                }),
                69..=77 => self.replay(m),
                78..=80 => self.existing(m).map(|c| Op::SetOverdraft { c, limit: *self.rng.pick(&[0, 0, 20, 50, 100]) }),
                81..=82 => self.existing(m).map(|c| {
                    let ci = CUSTOMERS.iter().position(|x| *x == c).unwrap();
                    let frozen = !m.custs[ci].frozen && self.rng.pct(40);
                    Op::SetFrozen { c, frozen }
                }),
                83..=91 => Some(self.clock(m)),
                92 => Some(Op::Maintenance),
                _ => Some(self.invalid(m)),
            };
            if let Some(op) = op {
                return op;
            }
        }
    }
}

fn unknown_uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

/// The database's side of the story, for the failure log.
fn dump(db: &mut Client) -> String {
    let mut out = String::new();
    for (title, sql) in [
        ("journal", "SELECT customer, seq, at, kind, amount, balance_after, idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas FROM billing.journal ORDER BY customer, seq"),
        ("grants", "SELECT customer, id, seq, amount, remaining, open, expires_at, priority FROM billing._grants_now ORDER BY customer, seq"),
        ("reservations", "SELECT customer, id, amount, status, expires_at, accounts, amounts, settled, consumed_accounts, consumed_amounts FROM billing.reservations ORDER BY customer, created_at"),
        ("customers", "SELECT * FROM billing.customers ORDER BY customer"),
    ] {
        out.push_str(&format!("== {title}\n"));
        match db.query(&format!("SELECT t::text FROM ({sql}) t"), &[]) {
            Ok(rows) => rows.iter().for_each(|r| out.push_str(&format!("{}\n", r.get::<_, String>(0)))),
            Err(e) => out.push_str(&format!("{e}\n")),
        }
    }
    out
}

struct Snapshot {
    cust: usize,
    at: i64,
    balance: i64,
}

fn compare_state(db: &mut Client, m: &Model) -> Result<(), String> {
    let mut db = at(db, m.now);
    // Balances of every customer, and BL003 for one never seen.
    let names: Vec<String> = CUSTOMERS.iter().enumerate().filter(|(i, _)| m.custs[*i].exists).map(|(_, c)| c.to_string()).collect();
    let rows = db
        .query("SELECT c, billing.balance(c) FROM unnest($1::text[]) WITH ORDINALITY AS u(c, n) ORDER BY n", &[&names])
        .map_err(|e| format!("billing.balance: {}", msg(&e)))?;
    for r in rows {
        let c: String = r.get(0);
        let got: i64 = r.get(1);
        let want = m.balance(m.cust(&c).unwrap());
        if got != want {
            return Err(format!("billing.balance({c}) = {got}, model says {want}"));
        }
    }
    // Every grant's remaining.
    let mut got: Vec<(String, String, i64)> = db
        .query("SELECT customer, id::text, remaining FROM billing._grants_now", &[])
        .map_err(|e| format!("billing.grants: {}", msg(&e)))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut want: Vec<(String, String, i64)> =
        m.custs.iter().enumerate().flat_map(|(i, c)| c.grants.iter().map(move |g| (CUSTOMERS[i].to_string(), g.id.clone(), g.remaining))).collect();
    got.sort();
    want.sort();
    if got != want {
        let diff: Vec<String> = want
            .iter()
            .filter(|w| !got.contains(w))
            .map(|w| format!("  model {w:?} / db {:?}", got.iter().find(|g| g.1 == w.1)))
            .chain(got.iter().filter(|g| !want.iter().any(|w| w.1 == g.1)).map(|g| format!("  db only {g:?}")))
            .collect();
        return Err(format!("grants' remaining differ:\n{}", diff.join("\n")));
    }
    Ok(())
}

fn check_balance_at(db: &mut Client, now: i64, s: &Snapshot) -> Result<(), String> {
    let got: i64 = at(db, now)
        .query_one("SELECT billing.balance_at($1, $2::text::timestamptz)", &[&CUSTOMERS[s.cust], &ts(s.at)])
        .map_err(|e| format!("balance_at: {}", msg(&e)))?
        .get(0);
    if got != s.balance {
        return Err(format!("billing.balance_at({}, '{}') = {got}, model recorded {}", CUSTOMERS[s.cust], ts(s.at), s.balance));
    }
    Ok(())
}

#[test]
fn ledger_matches_model() {
    let seed: u64 = match std::env::var("MODEL_SEED") {
        Ok(s) => s.trim().parse().expect("MODEL_SEED must be an unsigned integer"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
        }
    };
    let steps: usize = std::env::var("MODEL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let mode = std::env::var("MODEL_NO_EXPIRY").unwrap_or_default();
    let (no_expiry, no_lapse) = (mode == "1", mode == "1" || mode == "holds");
    let mode = if mode.is_empty() { String::new() } else { format!(" MODEL_NO_EXPIRY={mode}") };
    println!("model test: MODEL_SEED={seed} MODEL_STEPS={steps}{mode}");

    let tdb = TestDb::new("model");
    let mut db = tdb.connect();
    // The test clock round-trips exactly.
    let probe = 123 * 86_400 * SEC + 4_567_891;
    let back: i64 = db.query_one(&format!("SELECT {}", micros_sql(&format!("'{}'::timestamptz", ts(probe)))), &[]).unwrap().get(0);
    assert_eq!(back, probe, "ts() and micros_sql() disagree");

    let mut m = Model::new();
    let mut g = Gen { rng: Rng::new(seed), no_expiry, no_lapse, keyed: vec![], n: 0 };
    let mut snaps: Vec<Snapshot> = vec![];
    let mut log: Vec<String> = vec![];
    let mut counts: HashMap<String, (u64, u64)> = HashMap::new(); // op kind -> (ok, error)
    let started = std::time::Instant::now();

    let mut dbg = tdb.connect(); // for the dump on failure
    let mut fail = |step: usize, log: &[String], why: String| -> ! {
        let tail = &log[log.len().saturating_sub(40)..];
        let path = std::env::temp_dir().join(format!("billing-model-{seed}.log"));
        let _ = std::fs::write(&path, format!("{}\n\n{}", log.join("\n"), dump(&mut dbg)));
        panic!(
            "model and database disagree at step {step} (MODEL_SEED={seed}{}):\n{why}\n\nlast operations (all of them in {}):\n{}",
            mode,
            path.display(),
            tail.join("\n")
        )
    };

    for step in 1..=steps {
        let op = g.next(&m);
        // Before the clock moves on, record balances at the instant left behind and at
        // one in between, for balance_at later.
        if let Op::Clock(t) = op {
            if t > m.now {
                let mid = m.now + 1 + (g.rng.next_u64() % (t - m.now) as u64) as i64 - 1;
                for ci in 0..CUSTOMERS.len() {
                    if m.custs[ci].exists {
                        snaps.push(Snapshot { cust: ci, at: m.now, balance: m.balance(ci) });
                        if mid > m.now {
                            snaps.push(Snapshot { cust: ci, at: mid, balance: m.balance_at(ci, mid) });
                        }
                    }
                }
            }
        }
        let act = run(&mut db, m.now, &op);
        let kind = op.kind().to_string();
        log.push(format!("{step:5} {op}\n        -> {act:?}"));
        let mut next = m.clone();
        match next.exec(&op, &act) {
            Ok(changed) => {
                let e = counts.entry(kind).or_default();
                if act.is_ok() {
                    e.0 += 1
                } else {
                    e.1 += 1
                }
                if changed {
                    m = next;
                    // a new keyed operation (replays return Ok(false)): replay it later
                    if matches!(op, Op::Grant { .. } | Op::Debit { .. } | Op::Reserve { .. } | Op::Refund { .. }) {
                        g.keyed.push(op.clone());
                    }
                }
            }
            Err(why) => fail(step, &log, format!("{op}\n  {why}")),
        }
        if let Err(why) = compare_state(&mut db, &m) {
            fail(step, &log, why);
        }
        if step % 100 == 0 {
            if let Err(why) = verify(&mut db) {
                fail(step, &log, why);
            }
        }
        if step % 20 == 0 && !snaps.is_empty() {
            for _ in 0..2 {
                let s = &snaps[g.rng.below(snaps.len())];
                if let Err(why) = check_balance_at(&mut db, m.now, s) {
                    fail(step, &log, why);
                }
            }
        }
    }
    if let Err(why) = verify(&mut db) {
        fail(steps, &log, why);
    }
    for s in &snaps {
        if let Err(why) = check_balance_at(&mut db, m.now, s) {
            fail(steps, &log, why);
        }
    }
    let mut kinds: Vec<_> = counts.into_iter().collect();
    kinds.sort();
    println!(
        "model test: {steps} steps, {} balance_at checks, simulated {:.1} h, {:.1} s; per operation (ok, error): {kinds:?}",
        snaps.len(),
        m.now as f64 / 3600e6,
        started.elapsed().as_secs_f64()
    );
}
