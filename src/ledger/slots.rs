//! Slotted balances for hot customers (`billing.set_slots`, sql/ledger.sql).
//!
//! A customer's debits queue on its lock, each holding it through its commit flush. A
//! slotted customer's credits are spread over `n` accounts: its own (slot 0) and
//! `<customer>#<k>` for k in 1..n, each a ledger of its own. Spending calls go to the slot
//! their idempotency key hashes to (`route`, confirmed by the locked row or `reroute`d),
//! so a retry meets its first entry under the same lock; the customer's own journal is
//! checked too, for keys used before the customer was slotted or by a call that was
//! gathered. A call that finds its slot short gathers (`gather_from`): it takes every
//! slot's lock in slot order, moves the slots' credits back to the grants they came from
//! (`gather`), runs on the customer's own account, and spreads again (`spread`). The
//! spending calls themselves (`api`) drive the store and call here on those paths only.
use super::rules::{Acct, Entry, Grant, Id, Kind, Ts};
use super::store::{advisory_lock, unknown_customer, Extra, Keyed, Op};
use crate::error::{BillingError, Result};
use crate::pg::spi::{new_id, ts, uuid, Stmt};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::spi::SpiClient;
use std::cell::RefCell;
use std::collections::HashMap;

pub const MAX_SLOTS: i32 = 64;

thread_local! {
    /// Slot counts of the slotted customers this backend has met. A count never changes
    /// once set, and every routed call checks it against the row it locked, so an entry
    /// missing here (or left by a transaction that rolled back) costs one retry.
    static KNOWN: RefCell<HashMap<String, i32>> = RefCell::new(HashMap::new());
}

fn known(customer: &str) -> i32 {
    KNOWN.with(|k| k.borrow().get(customer).copied().unwrap_or(1))
}

fn learn(customer: &str, n: i32) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if n > 1 {
            k.insert(customer.to_string(), n);
        } else {
            k.remove(customer);
        }
    });
}

/// The account of slot `k` (slot 0 is the customer's own).
/// Whether `account` is one of `customer`'s slot accounts (`<customer>#<k>`, k >= 1).
pub fn is_slot_of(account: &str, customer: &str) -> bool {
    account
        .strip_prefix(customer)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|k| k.parse::<i32>().ok())
        .is_some_and(|k| (1..MAX_SLOTS).contains(&k) && account == self::account(customer, k))
}

pub fn account(customer: &str, k: i32) -> String {
    if k == 0 {
        customer.to_string()
    } else {
        format!("{customer}#{k}")
    }
}

/// The slot an idempotency key belongs to: FNV-1a, the same in every backend and release.
pub fn slot_of_key(key: &str, n: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as i32
}

/// The id of grant `origin`'s mirror in slot `k`: derived, so every spread finds it again.
pub fn mirror_id(origin: &Id, k: i32) -> Id {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"billing slot mirror");
    h.update(origin);
    h.update(k.to_be_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id[6] = (id[6] & 0x0f) | 0x80; // UUID version 8 (custom), RFC 9562
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Where a spending call under `key` goes: the account of the slot the key hashes to,
/// for the slot count this backend knows (`KNOWN`; 1, the customer's own account, when it
/// knows none). The row of the account, once locked, confirms it (`confirmed_by`).
pub struct Route<'r> {
    customer: &'r str,
    key: &'r str,
    /// The slot count it routes by, and the key's slot.
    pub n: i32,
    k: i32,
    pub account: String,
    /// Which try of the call this is (`reroute`).
    tries: u8,
}

/// The route of a spending call of `customer` under idempotency key `key`.
pub fn route<'r>(customer: &'r str, key: &'r str) -> Route<'r> {
    let n = known(customer);
    let k = if n > 1 { slot_of_key(key, n) } else { 0 };
    Route { customer, key, n, k, account: account(customer, k), tries: 1 }
}

impl Route<'_> {
    /// Whether it routes by slots, so a slot too short for the call gathers (`gather_from`).
    pub fn slotted(&self) -> bool {
        self.n > 1
    }

    /// On a slot account, the customer, whose own journal holds the key too when it was
    /// used before the customer was slotted or by a call that gathered.
    pub fn parent(&self) -> Option<&str> {
        (self.k != 0).then_some(self.customer)
    }

    /// Whether the row of the account it named, locked, says it is right.
    pub fn confirmed_by(&self, op: &Op) -> bool {
        let parent = op.slot_of.as_deref();
        if self.k == 0 {
            parent.is_none() && op.slots == self.n
        } else {
            parent == Some(self.customer)
        }
    }
}

/// The next route of a spending call whose account contradicted its route
/// (`confirmed_by`) or does not exist: the call leaves the account (`Op::unlock`) and
/// routes again by the slot count its row gives (learnt). Or the call's error: an unknown
/// customer, a slot account named as a customer, or slots that changed on every try.
pub fn reroute<'r>(route: Route<'r>, found: Option<(Op, Option<Keyed>)>) -> Result<Route<'r>> {
    let (customer, n, k) = (route.customer, route.n, route.k);
    match found {
        None if n > 1 => learn(customer, 1), // a slot that does not exist: the count was wrong
        None => return Err(unknown_customer(customer)),
        Some((op, _)) => {
            let slots = op.slots;
            let named_a_slot = match (k, &op.slot_of) {
                (0, Some(parent)) => {
                    Some(BillingError::invalid(format!("\"{customer}\" is a slot account of customer \"{parent}\"; name the customer")))
                }
                _ => None,
            };
            op.unlock();
            if let Some(e) = named_a_slot {
                return Err(e);
            }
            learn(customer, if k == 0 { slots } else { 1 });
        }
    }
    if route.tries == 3 {
        return Err(BillingError::new(crate::error::SERIALIZATION, format!("the slots of customer \"{customer}\" changed during the call"))
            .hint("Retry the transaction."));
    }
    Ok(Route { tries: route.tries + 1, ..self::route(customer, route.key) })
}

/// A spending call whose slot is short gathers: it leaves its slot and runs again on the
/// customer's own account, every slot's credits gathered into it (`gather`), ended by
/// `spread`. Returns that account and the entry already made under the key (in the
/// slot's journal, else the customer's own).
pub fn gather_from<'a, 'c>(op: Op<'a, 'c>, route: &Route, now: Ts) -> Result<(Op<'a, 'c>, Option<Keyed>)> {
    // Slot locks are taken in slot order, by a caller holding none of them,
    // so gatherers cannot deadlock. Two cases keep their slot's lock: a
    // transaction that took it in an earlier statement, and an attempt that
    // wrote down expiries first (what it wrote must stay); a cycle between
    // those is the deadlock detector's (40P01).
    let c = if op.wrote() { op.finish()? } else { op.unlock() };
    let mut op = gather(c, route.customer, route.n, now)?;
    let keyed = match op.find_key_in(&route.account, route.key)? {
        Some(kd) => Some(kd),
        None => op.find_key(route.key)?,
    };
    Ok((op, keyed))
}

/// A grant's credits moved by a transfer: which grant, how many.
type Lines = Vec<(Acct, i64)>;

/// The customer's own account with every slot's credits gathered into it (all slot locks
/// held, in slot order), for a call that `spread` then ends.
pub fn gather<'a, 'c>(c: &'a mut SpiClient<'c>, customer: &str, n: i32, now: Ts) -> Result<Op<'a, 'c>> {
    for k in 0..n {
        advisory_lock(&account(customer, k));
    }
    // 1. Every slot gives its live credits back to the grants they came from. Each slot's
    //    row is written even when it gives nothing: a REPEATABLE READ call routed there
    //    then fails to serialize instead of missing what this call did.
    let mut back: Vec<(Id, Id, Lines)> = vec![];
    for k in 1..n {
        let acct = account(customer, k);
        let mut op = Op::lock_existing_held(c, &acct, now)?;
        op.catch_up()?;
        op.load_live_grants()?;
        let at = op.now;
        let held: Vec<(Id, i64)> = op.book.grants.iter().filter(|g| g.live(at) && g.remaining > 0).map(|g| (g.id, g.remaining)).collect();
        if !held.is_empty() {
            let ids: Vec<Id> = held.iter().map(|h| h.0).collect();
            let origins: HashMap<Id, Id> = op.origins(&ids)?.into_iter().collect();
            let (out, into) = (new_id(), new_id());
            let lines: Lines = held.iter().map(|&(g, x)| (Acct::Grant(g), -x)).collect();
            let to: Lines =
                held.iter().map(|&(g, x)| origins.get(&g).map(|o| (Acct::Grant(*o), x)).ok_or_else(|| no_origin(&acct))).collect::<Result<_>>()?;
            let e = Entry { kind: Kind::Transfer, at, lines, grant: None, hold: None };
            op.write(&e, Extra { ref_entry: Some(uuid(&into)), entry_id: Some(out), ..Default::default() })?;
            back.push((into, out, to));
        }
        op.finish()?;
    }
    // 2. The call itself, on the customer's own account holding everything.
    let mut op = Op::lock_existing_held(c, customer, now)?;
    op.catch_up()?;
    op.load_live_grants()?;
    for (into, out, to) in back {
        let ids: Vec<Id> = to.iter().filter_map(|l| if let Acct::Grant(g) = l.0 { Some(g) } else { None }).collect();
        op.load_grants(&ids)?;
        let e = Entry { kind: Kind::Transfer, at: op.now, lines: to, grant: None, hold: None };
        op.write_and_settle_expired(&e, Extra { ref_entry: Some(uuid(&out)), entry_id: Some(into), ..Default::default() })?;
    }
    Ok(op)
}

/// Ends a call on the gathered account (`gather`): spreads the live grants again, each
/// slot getting `remaining / n` of every grant, on that grant's mirror.
pub fn spread(mut op: Op, customer: &str, n: i32, now: Ts) -> Result<()> {
    op.threshold_balance = Some(op.book.balance);
    // 3. Spread: each slot gets an equal share of each live grant.
    let at = op.now;
    let shares: Vec<Grant> = op
        .book
        .grants
        .iter()
        .filter(|g| g.live(at) && g.remaining >= i64::from(n))
        .map(|g| Grant { remaining: g.remaining / i64::from(n), ..g.clone() })
        .collect();
    let mut sent: Vec<(i32, Id, Id)> = vec![];
    if !shares.is_empty() {
        for k in 1..n {
            let (out, into) = (new_id(), new_id());
            let lines: Lines = shares.iter().map(|g| (Acct::Grant(g.id), -g.remaining)).collect();
            let e = Entry { kind: Kind::Transfer, at, lines, grant: None, hold: None };
            op.write(&e, Extra { ref_entry: Some(uuid(&into)), entry_id: Some(out), ..Default::default() })?;
            sent.push((k, out, into));
        }
    }
    let c = op.finish()?;
    // 4. Each slot receives its share on its mirrors, made on first use.
    for (k, out, into) in sent {
        let acct = account(customer, k);
        let mut op = Op::lock_existing_held(c, &acct, now)?;
        op.catch_up()?;
        op.load_live_grants()?;
        let mirrors: Vec<Id> = shares.iter().map(|g| mirror_id(&g.id, k)).collect();
        op.load_grants(&mirrors)?;
        let mut lines: Lines = vec![];
        for (g, m) in shares.iter().zip(&mirrors) {
            if !op.book.grants.iter().any(|x| &x.id == m) {
                // The mirror takes its grant's seq, so a slot spends in the customer's order.
                let now = op.now;
                op.run(
                    &MIRROR_INSERT,
                    &[acct.as_str().into(), uuid(m).into(), uuid(&into).into(), ts(now).into(), customer.into(), uuid(&g.id).into()],
                )?;
                op.add_grant(Grant { id: *m, remaining: 0, expires_at: g.expires_at, priority: g.priority, seq: g.seq });
            }
            lines.push((Acct::Grant(*m), g.remaining));
        }
        let e = Entry { kind: Kind::Transfer, at: op.now, lines, grant: None, hold: None };
        op.write(&e, Extra { ref_entry: Some(uuid(&out)), entry_id: Some(into), ..Default::default() })?;
        op.finish()?;
    }
    Ok(())
}

fn no_origin(acct: &str) -> BillingError {
    BillingError::new(crate::error::INTERNAL, format!("a grant of slot account \"{acct}\" has no origin grant"))
}

static MIRROR_INSERT: Stmt = Stmt {
    sql:
        "INSERT INTO billing.grants (customer, id, seq, source, amount, remaining, open, expires_at, priority, metadata, entry_id, created_at, origin)
          SELECT $1, $2, g.seq, g.source, 0, 0, false, g.expires_at, g.priority, g.metadata, $3, $4, g.id
            FROM billing.grants g WHERE g.customer = $5 AND g.id = $6",
    args: &[TEXTOID, UUIDOID, UUIDOID, TIMESTAMPTZOID, TEXTOID, UUIDOID],
};
static SLOT_CREATE: Stmt = Stmt {
    sql: "INSERT INTO billing.customers (customer, slot_of, frozen)
          SELECT $1 || '#' || k, $1, $3 FROM generate_series(1, $2 - 1) k",
    args: &[TEXTOID, INT4OID, BOOLOID],
};
static SLOT_CLASH: Stmt = Stmt {
    sql: "SELECT customer FROM billing.customers WHERE customer IN (SELECT $1 || '#' || k FROM generate_series(1, $2 - 1) k) LIMIT 1",
    args: &[TEXTOID, INT4OID],
};
static SET_SLOTS: Stmt = Stmt { sql: "UPDATE billing.customers SET slots = $2 WHERE customer = $1", args: &[TEXTOID, INT4OID] };

/// `billing.set_slots`: makes `customer` slotted with `n` accounts and spreads its credits.
pub fn set_slots(c: &mut SpiClient<'_>, customer: &str, n: i32, now: Ts) -> Result<()> {
    if !(2..=MAX_SLOTS).contains(&n) {
        return Err(BillingError::invalid(format!("slots must be 2 to {MAX_SLOTS}, got {n} (customer \"{customer}\")")));
    }
    if crate::cluster::citus() {
        // A slot account is a customer of its own, on another shard: a slotted debit would
        // span shards. A cluster spreads load over customers instead.
        return Err(BillingError::new(
            crate::error::NOT_SUPPORTED,
            format!("slots are not supported on a server running Citus (customer \"{customer}\")"),
        ));
    }
    let op = Op::lock_existing(c, customer, now)?;
    op.not_a_slot()?;
    let (had, frozen) = (op.slots, op.frozen);
    drop(op);
    if had == n {
        return Ok(());
    }
    if had > 1 {
        return Err(BillingError::invalid(format!("customer \"{customer}\" has {had} slots; the count is fixed once set"))
            .hint("A key's slot follows from the count, so changing it would let a retried key charge twice."));
    }
    let t = crate::pg::spi::run(c, &SLOT_CLASH, &[customer.into(), n.into()])?;
    if let Some(name) = t.into_iter().next().map(|r| r.get::<String>(1)).transpose()?.flatten() {
        return Err(BillingError::invalid(format!("cannot make slots for customer \"{customer}\": a customer \"{name}\" exists")));
    }
    crate::pg::spi::run(c, &SLOT_CREATE, &[customer.into(), n.into(), frozen.into()])?;
    crate::pg::spi::run(c, &SET_SLOTS, &[customer.into(), n.into()])?;
    learn(customer, n);
    let op = gather(c, customer, n, now)?;
    spread(op, customer, n, now)
}

/// What a slotted customer's slot accounts (1..n) hold, each as of `now`: its balance is
/// this plus its own account's.
pub fn slot_balances(c: &mut SpiClient<'_>, customer: &str, n: i32, now: Ts) -> Result<i64> {
    let mut total = 0i64;
    for k in 1..n {
        let b = Op::read(c, &account(customer, k), now)?.peek_balance()?;
        total = total.saturating_add(b);
    }
    Ok(total)
}

/// Takes the locks of slots 1..n of a customer whose own lock the caller holds (after
/// reading its slot count under it), for writers that must exclude every account (a
/// freeze); returns all the accounts, its own first.
pub fn lock_slots(customer: &str, n: i32) -> Vec<String> {
    learn(customer, n);
    let accounts: Vec<String> = (0..n).map(|k| account(customer, k)).collect();
    for a in &accounts[1..] {
        advisory_lock(a);
    }
    accounts
}

#[cfg(test)]
mod tests {

    #[test]
    fn slot_accounts_are_recognised_by_name() {
        assert!(is_slot_of("acme#1", "acme"));
        assert!(is_slot_of("acme#63", "acme"));
        assert!(!is_slot_of("acme#64", "acme"));
        assert!(!is_slot_of("acme#0", "acme"));
        assert!(!is_slot_of("acme#01", "acme"));
        assert!(!is_slot_of("acme", "acme"));
        assert!(!is_slot_of("acme#x", "acme"));
        assert!(!is_slot_of("acmex#1", "acme"));
        assert!(!is_slot_of("other#1", "acme"));
    }

    use super::*;

    #[test]
    fn keys_spread_over_every_slot_and_stay_put() {
        let mut seen = [0u32; 8];
        for i in 0..8000 {
            let k = format!("req-{i}");
            let s = slot_of_key(&k, 8);
            assert_eq!(s, slot_of_key(&k, 8));
            seen[s as usize] += 1;
        }
        // Every slot gets a fair part (1000 each on average).
        assert!(seen.iter().all(|&x| (800..1200).contains(&x)), "{seen:?}");
    }

    #[test]
    fn slot_of_key_is_the_published_fnv1a() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(slot_of_key("a", 1 << 30), (0xaf63_dc4c_8601_ec8c_u64 % (1 << 30)) as i32);
        assert_eq!(slot_of_key("anything", 1), 0);
    }

    #[test]
    fn mirrors_are_distinct_per_slot_and_grant() {
        let g1 = [1u8; 16];
        let g2 = [2u8; 16];
        assert_ne!(mirror_id(&g1, 1), mirror_id(&g1, 2));
        assert_ne!(mirror_id(&g1, 1), mirror_id(&g2, 1));
        assert_eq!(mirror_id(&g1, 3), mirror_id(&g1, 3));
        assert_eq!(mirror_id(&g1, 3)[6] >> 4, 8);
    }

    #[test]
    fn slot_zero_is_the_customer() {
        assert_eq!(account("acme", 0), "acme");
        assert_eq!(account("acme", 3), "acme#3");
    }
}
