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
use crate::pg::spi::{run, ts, Stmt};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashSet;

/// The journal rows (an entry of one line: its account and delta as one-element arrays),
/// the grants' remainders moved by a delta, and the customer rows, from arrays.
static WRITE: Stmt = Stmt {
    sql: "WITH j AS (
            INSERT INTO billing.journal (customer, seq, entry_id, at, kind, amount, balance_after,
                idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas, metadata)
            SELECT u.customer, u.seq, u.entry_id, u.at, u.kind, u.amount, u.balance_after, u.key, u.grant_id,
                   u.hold, u.ref_entry, ARRAY[u.acct], ARRAY[u.delta], u.metadata::jsonb
              FROM unnest($1::text[], $2::int8[], $3::uuid[], $4::timestamptz[], $5::text[], $6::int8[], $7::int8[],
                          $8::text[], $9::uuid[], $10::uuid[], $11::uuid[], $12::uuid[], $13::int8[], $14::text[])
                   AS u(customer, seq, entry_id, at, kind, amount, balance_after, key, grant_id, hold, ref_entry,
                        acct, delta, metadata)),
          g AS (
            UPDATE billing.grants g SET remaining = g.remaining + d.delta, open = g.remaining + d.delta > 0
              FROM unnest($15::text[], $16::uuid[], $17::int8[]) AS d(customer, id, delta)
             WHERE g.customer = d.customer AND g.id = d.id)
          UPDATE billing.customers c
             SET balance = u.balance, od = u.od, seq = u.seq, last_at = u.last_at, next_event_at = u.next_event_at,
                 low_notified = u.low_notified, topup_notified = u.topup_notified, draw_grant = u.draw_grant,
                 draw = u.draw, draw_left = u.draw_left
            FROM unnest($18::text[], $19::int8[], $20::int8[], $21::int8[], $22::timestamptz[], $23::timestamptz[],
                        $24::bool[], $25::bool[], $26::uuid[], $27::int8[], $28::int8[])
                 AS u(customer, balance, od, seq, last_at, next_event_at, low_notified, topup_notified, draw_grant,
                      draw, draw_left)
           WHERE c.customer = u.customer",
    args: &[
        TEXTARRAYOID,
        INT8ARRAYOID,
        UUIDARRAYOID,
        TIMESTAMPTZARRAYOID,
        TEXTARRAYOID,
        INT8ARRAYOID,
        INT8ARRAYOID,
        TEXTARRAYOID,
        UUIDARRAYOID,
        UUIDARRAYOID,
        UUIDARRAYOID,
        UUIDARRAYOID,
        INT8ARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        UUIDARRAYOID,
        INT8ARRAYOID,
        TEXTARRAYOID,
        INT8ARRAYOID,
        INT8ARRAYOID,
        INT8ARRAYOID,
        TIMESTAMPTZARRAYOID,
        TIMESTAMPTZARRAYOID,
        BOOLARRAYOID,
        BOOLARRAYOID,
        UUIDARRAYOID,
        INT8ARRAYOID,
        INT8ARRAYOID,
    ],
};

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
    pub metadata: String,
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
        let e = std::mem::take(&mut self.entries);
        let g = std::mem::take(&mut self.grants);
        let r = std::mem::take(&mut self.rows);
        self.accounts.clear();
        let args: [pgrx::datum::DatumWithOid; 28] = [
            e.iter().map(|x| x.0.clone()).collect::<Vec<String>>().into(),
            e.iter().map(|x| x.1.seq).collect::<Vec<i64>>().into(),
            e.iter().map(|x| x.1.entry_id).collect::<Vec<pgrx::Uuid>>().into(),
            e.iter().map(|x| ts(x.1.at)).collect::<Vec<TimestampWithTimeZone>>().into(),
            e.iter().map(|x| x.1.kind).collect::<Vec<&str>>().into(),
            e.iter().map(|x| x.1.amount).collect::<Vec<i64>>().into(),
            e.iter().map(|x| x.1.balance_after).collect::<Vec<i64>>().into(),
            e.iter().map(|x| x.1.key.clone()).collect::<Vec<Option<String>>>().into(),
            e.iter().map(|x| x.1.grant).collect::<Vec<Option<pgrx::Uuid>>>().into(),
            e.iter().map(|x| x.1.hold).collect::<Vec<Option<pgrx::Uuid>>>().into(),
            e.iter().map(|x| x.1.ref_entry).collect::<Vec<Option<pgrx::Uuid>>>().into(),
            e.iter().map(|x| x.1.acct).collect::<Vec<pgrx::Uuid>>().into(),
            e.iter().map(|x| x.1.delta).collect::<Vec<i64>>().into(),
            e.iter().map(|x| x.1.metadata.clone()).collect::<Vec<String>>().into(),
            g.iter().map(|x| x.0.clone()).collect::<Vec<String>>().into(),
            g.iter().map(|x| x.1).collect::<Vec<pgrx::Uuid>>().into(),
            g.iter().map(|x| x.2).collect::<Vec<i64>>().into(),
            r.iter().map(|x| x.0.clone()).collect::<Vec<String>>().into(),
            r.iter().map(|x| x.1.balance).collect::<Vec<i64>>().into(),
            r.iter().map(|x| x.1.od).collect::<Vec<i64>>().into(),
            r.iter().map(|x| x.1.seq).collect::<Vec<i64>>().into(),
            r.iter().map(|x| ts(x.1.last_at)).collect::<Vec<TimestampWithTimeZone>>().into(),
            r.iter().map(|x| ts(x.1.next_event_at)).collect::<Vec<TimestampWithTimeZone>>().into(),
            r.iter().map(|x| x.1.low_notified).collect::<Vec<bool>>().into(),
            r.iter().map(|x| x.1.topup_notified).collect::<Vec<bool>>().into(),
            r.iter().map(|x| x.1.draw_grant).collect::<Vec<Option<pgrx::Uuid>>>().into(),
            r.iter().map(|x| x.1.draw).collect::<Vec<i64>>().into(),
            r.iter().map(|x| x.1.draw_left).collect::<Vec<Option<i64>>>().into(),
        ];
        run(c, &WRITE, &args)?;
        Ok(())
    }
}
