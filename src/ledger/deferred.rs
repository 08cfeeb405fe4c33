//! The last writes of many accounts' operations, written in one statement (a batch:
//! `debit_many`, `record_usage_many`). An operation ends by writing its last journal
//! entry, its grants' remainders and its customer row (`Op::finish`); in a batch each
//! item's are kept here instead (`Op::finish_into`) and `write` sends them all at once:
//! one executor run for the batch instead of one per item.
//!
//! What is kept is not visible to reads until written, so the batch writes it before any
//! item that reads an account with writes kept (a second item of one customer), and
//! before it returns. Kept rows are rows of accounts the batch holds locked, so nothing
//! else writes them in between. Nothing here runs inside a subtransaction: an operation
//! that may be rolled back on its own (a slotted debit's gathering) finishes as usual.
use crate::pg::records::Records;
use crate::pg::spi::{jsonb_param, run, ts, Stmt};
use pgrx::pg_sys;
use pgrx::pg_sys::BuiltinOid::RECORDARRAYOID;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashSet;

/// The journal rows (an entry of one line: its account and delta as one-element arrays),
/// the grants' remainders moved by a delta, and the customer rows, each from one array
/// of records (`pg::records`; the column lists are `ENTRY`, `GRANT` and `ROW`).
static WRITE: Stmt = Stmt {
    sql: "WITH j AS (
            INSERT INTO billing.journal (customer, seq, entry_id, at, kind, amount, balance_after,
                idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas, metadata)
            SELECT u.customer, u.seq, u.entry_id, u.at, u.kind, u.amount, u.balance_after, u.key, u.grant_id,
                   u.hold, u.ref_entry, ARRAY[u.acct], ARRAY[u.delta], u.metadata
              FROM unnest($1::record[]) AS u(customer text, seq int8, entry_id uuid, at timestamptz, kind text,
                   amount int8, balance_after int8, key text, grant_id uuid, hold uuid, ref_entry uuid, acct uuid,
                   delta int8, metadata jsonb)),
          g AS (
            UPDATE billing.grants g SET remaining = g.remaining + d.delta, open = g.remaining + d.delta > 0
              FROM unnest($2::record[]) AS d(customer text, id uuid, delta int8)
             WHERE g.customer = d.customer AND g.id = d.id)
          UPDATE billing.customers c
             SET balance = u.balance, od = u.od, seq = u.seq, last_at = u.last_at, next_event_at = u.next_event_at,
                 low_notified = u.low_notified, topup_notified = u.topup_notified, draw_grant = u.draw_grant,
                 draw = u.draw, draw_left = u.draw_left
            FROM unnest($3::record[]) AS u(customer text, balance int8, od int8, seq int8, last_at timestamptz,
                 next_event_at timestamptz, low_notified bool, topup_notified bool, draw_grant uuid, draw int8,
                 draw_left int8)
           WHERE c.customer = u.customer",
    args: &[RECORDARRAYOID, RECORDARRAYOID, RECORDARRAYOID],
};
/// The columns of WRITE's three arrays, as its column definition lists name them.
const ENTRY: &[pg_sys::Oid] = &[
    pg_sys::TEXTOID,
    pg_sys::INT8OID,
    pg_sys::UUIDOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::TEXTOID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::TEXTOID,
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::INT8OID,
    pg_sys::JSONBOID,
];
const GRANT: &[pg_sys::Oid] = &[pg_sys::TEXTOID, pg_sys::UUIDOID, pg_sys::INT8OID];
const ROW: &[pg_sys::Oid] = &[
    pg_sys::TEXTOID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::BOOLOID,
    pg_sys::BOOLOID,
    pg_sys::UUIDOID,
    pg_sys::INT8OID,
    pg_sys::INT8OID,
];

/// A journal entry of one line, kept for `WRITE`.
pub struct Entry {
    pub seq: i64,
    pub entry_id: pgrx::Uuid,
    pub at: i64,
    pub kind: &'static str,
    pub amount: i64,
    pub balance_after: i64,
    pub key: Option<String>,
    pub grant: Option<pgrx::Uuid>,
    pub hold: Option<pgrx::Uuid>,
    pub ref_entry: Option<pgrx::Uuid>,
    pub acct: pgrx::Uuid,
    pub delta: i64,
    pub metadata: serde_json::Value,
}

/// A customer row's ledger columns, kept for `WRITE`.
pub struct Row {
    pub balance: i64,
    pub od: i64,
    pub seq: i64,
    pub last_at: i64,
    pub next_event_at: i64,
    pub low_notified: bool,
    pub topup_notified: bool,
    pub draw_grant: Option<pgrx::Uuid>,
    pub draw: i64,
    pub draw_left: Option<i64>,
}

/// The kept writes, by account.
#[derive(Default)]
pub struct Deferred {
    entries: Vec<(String, Entry)>,
    grants: Vec<(String, pgrx::Uuid, i64)>,
    rows: Vec<(String, Row)>,
    accounts: HashSet<String>,
}

impl Deferred {
    /// Keeps one operation's last writes on `account` (at most one per account: the batch
    /// writes before a second operation on it opens).
    pub fn keep(&mut self, account: &str, entry: Option<Entry>, grants: Vec<(pgrx::Uuid, i64)>, row: Row) {
        debug_assert!(!self.accounts.contains(account), "a second operation on {account} before the first was written");
        if let Some(e) = entry {
            self.entries.push((account.to_string(), e));
        }
        self.grants.extend(grants.into_iter().map(|(id, d)| (account.to_string(), id, d)));
        self.rows.push((account.to_string(), row));
        self.accounts.insert(account.to_string());
    }

    /// Whether writes of `account` are kept (and must be written before it is read).
    pub fn holds(&self, account: &str) -> bool {
        self.accounts.contains(account)
    }

    /// Writes everything kept, in one statement, and forgets it.
    pub fn write(&mut self, c: &mut SpiClient<'_>) -> crate::error::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let (mut entries, mut grants, mut rows) = (Records::new(ENTRY), Records::new(GRANT), Records::new(ROW));
        for (customer, x) in std::mem::take(&mut self.entries) {
            let metadata = jsonb_param(x.metadata);
            entries.push(&[
                customer.into_datum(),
                x.seq.into_datum(),
                x.entry_id.into_datum(),
                ts(x.at).into_datum(),
                x.kind.into_datum(),
                x.amount.into_datum(),
                x.balance_after.into_datum(),
                x.key.into_datum(),
                x.grant.into_datum(),
                x.hold.into_datum(),
                x.ref_entry.into_datum(),
                x.acct.into_datum(),
                x.delta.into_datum(),
                metadata.datum().map(|d| d.sans_lifetime()),
            ]);
        }
        for (customer, id, delta) in std::mem::take(&mut self.grants) {
            grants.push(&[customer.into_datum(), id.into_datum(), delta.into_datum()]);
        }
        for (customer, x) in std::mem::take(&mut self.rows) {
            rows.push(&[
                customer.into_datum(),
                x.balance.into_datum(),
                x.od.into_datum(),
                x.seq.into_datum(),
                ts(x.last_at).into_datum(),
                ts(x.next_event_at).into_datum(),
                x.low_notified.into_datum(),
                x.topup_notified.into_datum(),
                x.draw_grant.into_datum(),
                x.draw.into_datum(),
                x.draw_left.into_datum(),
            ]);
        }
        self.accounts.clear();
        let args = [entries.param(), grants.param(), rows.param()];
        run(c, &WRITE, &args)?;
        Ok(())
    }
}
