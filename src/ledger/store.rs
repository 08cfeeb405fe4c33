//! One customer's ledger operation over SPI: lock the customer row, catch up what expired,
//! let `core` decide, write the journal entries, flush grant and customer rows once.
use super::rules::{Acct, Book, Entry, Grant, Hold, Id, Kind, Ts, NEVER};
use crate::error::{BillingError, Result, UNKNOWN};
use crate::pg::direct;
use crate::pg::spi::{id_of, micros, new_id, run_ro, ts, uuid, xact_lock_new, xact_unlock, LockClass, Stmt};
use crate::pg::whole_row::Fields;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

const NIL: Id = [0u8; 16];

pub fn encode(a: Acct) -> pgrx::Uuid {
    match a {
        Acct::Grant(id) | Acct::Borrow(id) => uuid(&id),
        Acct::Debt => uuid(&NIL),
    }
}

/// Decodes an account of a hold's or a debit's lines: the nil uuid is the overdraft
/// account, the hold's own id its borrowing, anything else a grant.
pub fn decode(u: &pgrx::Uuid, hold: Option<&Id>) -> Acct {
    let id = id_of(u);
    if id == NIL {
        Acct::Debt
    } else if Some(&id) == hold {
        Acct::Borrow(id)
    } else {
        Acct::Grant(id)
    }
}

pub fn decode_lines(accts: &[pgrx::Uuid], amounts: &[i64], hold: Option<&Id>) -> Vec<(Acct, i64)> {
    accts.iter().zip(amounts).map(|(u, &x)| (decode(u, hold), x)).collect()
}

pub fn encode_lines(lines: &[(Acct, i64)]) -> (Vec<pgrx::Uuid>, Vec<i64>) {
    lines.iter().map(|&(a, x)| (encode(a), x)).unzip()
}

/// `lines` as the two array parameters (accounts, amounts) they are stored in.
pub fn line_params<'a>(lines: &[(Acct, i64)]) -> [DatumWithOid<'a>; 2] {
    let (accts, amounts) = encode_lines(lines);
    [crate::pg::spi::uuid_array(&accts), crate::pg::spi::int8_array(&amounts)]
}

/// The two array parameters of `line_params` when there are no lines to store (NULL).
pub fn no_line_params<'a>() -> [DatumWithOid<'a>; 2] {
    [DatumWithOid::null_oid(UUIDARRAYOID.value()), DatumWithOid::null_oid(INT8ARRAYOID.value())]
}

/// Whether the customer's journal holds an entry under `key` (of any operation).
pub fn key_used(c: &mut SpiClient<'_>, customer: &str, key: &str) -> Result<bool> {
    Ok(!crate::pg::spi::run(c, &KEY_USED, &[customer.into(), key.into()])?.is_empty())
}

/// A customer row read whole (see `whole_row`): one output column for the executor to
/// describe and project instead of seventeen.
macro_rules! lookup_sql {
    () => {
        "SELECT c FROM billing.customers c WHERE c.customer = $1"
    };
}
/// The customer columns an operation reads, as `Op::open_as` numbers them (0-16).
static CUSTOMER: Fields = Fields(&[
    "balance",
    "od",
    "overdraft_limit",
    "frozen",
    "seq",
    "last_at",
    "next_event_at",
    "low_balance",
    "low_notified",
    "topup_below",
    "topup_notified",
    "slots",
    "slot_of",
    "draw_grant",
    "draw",
    "draw_left",
    "num",
]);
/// The journal columns of an entry found under an idempotency key (`keyed_whole`).
static KEYED: Fields = Fields(&["entry_id", "kind", "amount", "balance_after", "metadata", "grant_id", "reservation_id", "ref_entry"]);
static LOOKUP: Stmt = Stmt { sql: lookup_sql!(), args: &[TEXTOID] };
/// Under REPEATABLE READ and SERIALIZABLE the reads after the lock see the transaction's
/// snapshot, which may predate a change another session committed (a grant: then the
/// balance read would be too low and a debit refused with BL001). Locking the row as well
/// makes Postgres raise 40001 for a row changed since the snapshot, as the contract says.
static LOOKUP_XACT_SNAPSHOT: Stmt = Stmt { sql: concat!(lookup_sql!(), " FOR NO KEY UPDATE"), args: &[TEXTOID] };
static LOW_BALANCE: Stmt = Stmt {
    sql: "INSERT INTO billing.outbox (customer, kind, payload)
          VALUES ($1, 'low_balance', jsonb_build_object('balance', $2::int8, 'threshold', $3::int8))",
    args: &[TEXTOID, INT8OID, INT8OID],
};
static TOPUP_DUE: Stmt = Stmt {
    sql: "WITH p AS (
            UPDATE billing.auto_topups a
               SET month = to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM'),
                   this_month = CASE WHEN a.month = to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM') THEN a.this_month ELSE 0 END + 1
             WHERE a.customer = $1 AND a.failures < a.max_failures
               AND CASE WHEN a.month = to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM') THEN a.this_month ELSE 0 END < a.monthly_cap
            RETURNING a.amount, a.month, a.this_month, a.failures)
          INSERT INTO billing.outbox (customer, kind, payload, idempotency_key)
          SELECT $1, 'topup_due', jsonb_build_object('amount', p.amount, 'month', p.month, 'n', p.this_month, 'failures', p.failures),
                 'topup:' || $1 || ':' || p.month || ':' || p.this_month
            FROM p",
    args: &[TEXTOID, TIMESTAMPTZOID],
};

/// A `topup_due` outbox row for the customer's auto top-up policy, if the month's cap
/// and the failure limit allow. Its idempotency key (customer, month, n-th top-up of the
/// month) is deterministic: a consumer that retries the provider call never charges twice.
pub fn emit_topup(c: &mut SpiClient<'_>, customer: &str, now: Ts) -> Result<()> {
    crate::access::outbox::write(c, &TOPUP_DUE, &[customer.into(), ts(now).into()])?;
    Ok(())
}

/// Balance thresholds of one customer: each crossing below writes one outbox row.
#[derive(Clone, Copy, Default)]
struct Thresholds {
    low: Option<i64>,
    low_notified: bool,
    topup: Option<i64>,
    topup_notified: bool,
}
/// A customer's row, made if it does not exist (ledger calls that create their customer,
/// webhook events that name one, `link_customer`).
pub static CREATE: Stmt = Stmt { sql: "INSERT INTO billing.customers (customer) VALUES ($1) ON CONFLICT (customer) DO NOTHING", args: &[TEXTOID] };
static GRANTS_LIVE: Stmt = Stmt {
    sql: "SELECT id, remaining, expires_at, priority, seq FROM billing.grants
           WHERE customer = $1 AND open AND expires_at > $2
           ORDER BY expires_at, priority DESC, seq",
    args: &[TEXTOID, TIMESTAMPTZOID],
};
static GRANTS_OPEN: Stmt = Stmt {
    sql: "SELECT id, remaining, expires_at, priority, seq FROM billing.grants
           WHERE customer = $1 AND open ORDER BY expires_at, priority DESC, seq",
    args: &[TEXTOID],
};
static GRANTS_BY_ID: Stmt = Stmt {
    sql: "SELECT id, remaining, expires_at, priority, seq FROM billing.grants
           WHERE customer = $1 AND id = ANY($2)",
    args: &[TEXTOID, UUIDARRAYOID],
};
static ORIGINS: Stmt =
    Stmt { sql: "SELECT id, origin FROM billing.grants WHERE customer = $1 AND id = ANY($2) AND origin IS NOT NULL", args: &[TEXTOID, UUIDARRAYOID] };
static HOLDS_ACTIVE: Stmt = Stmt {
    sql: "SELECT id, expires_at, accounts, amounts FROM billing.reservations
           WHERE customer = $1 AND status = 'active'",
    args: &[TEXTOID],
};
static HOLDS_LAPSED: Stmt = Stmt {
    sql: "UPDATE billing.reservations r SET status = 'expired', end_entry = u.entry
            FROM unnest($2::uuid[], $3::uuid[]) AS u(id, entry)
           WHERE r.customer = $1 AND r.id = u.id",
    args: &[TEXTOID, UUIDARRAYOID, UUIDARRAYOID],
};
static INSERT_ENTRY: Stmt = Stmt {
    sql: "INSERT INTO billing.journal (customer, seq, entry_id, at, kind, amount, balance_after,
            idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas, metadata)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    args: &[
        TEXTOID, INT8OID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT8OID, INT8OID, TEXTOID, UUIDOID, UUIDOID, UUIDOID, UUIDARRAYOID, INT8ARRAYOID,
        JSONBOID,
    ],
};
/// A grant's remainder moved by `$3`. One grant per statement, by the primary key: with
/// an array of ids the planner assumes ten and prefers to read all the customer's grants.
static GRANT_DELTA: Stmt = Stmt {
    sql: "UPDATE billing.grants g SET remaining = g.remaining + $3, open = g.remaining + $3 > 0
           WHERE g.customer = $1 AND g.id = $2",
    args: &[TEXTOID, UUIDOID, INT8OID],
};
/// The end of every operation, in one statement: its last journal entry (if any: the
/// entry columns are NULL otherwise), the last grant's new remainder (if any, as in
/// GRANT_DELTA) and the customer row. One executor run instead of three, on the path
/// every debit takes.
macro_rules! finish_sql {
    ($grant:expr) => {
        finish_sql!($grant, "")
    };
    ($grant:expr, $res:expr) => {
        concat!(
            "WITH j AS (
               INSERT INTO billing.journal (customer, seq, entry_id, at, kind, amount, balance_after,
                   idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas, metadata)
               SELECT $1, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 WHERE $10 IS NOT NULL)",
            $grant,
            $res,
            " UPDATE billing.customers SET balance = $2, od = $3, seq = $4, last_at = $5, next_event_at = $6,
                    low_notified = $7, topup_notified = $8, draw_grant = $24, draw = $25, draw_left = $26
              WHERE customer = $1"
        )
    };
}
const FINISH_ARGS: &[pgrx::pg_sys::PgBuiltInOids] = &[
    TEXTOID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, BOOLOID, INT8OID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT8OID,
    INT8OID, TEXTOID, UUIDOID, UUIDOID, UUIDOID, UUIDARRAYOID, INT8ARRAYOID, JSONBOID, UUIDOID, INT8OID, UUIDOID, INT8OID, INT8OID,
];
macro_rules! grant_cte {
    () => {
        ",
          g AS (
            UPDATE billing.grants g SET remaining = g.remaining + $23, open = g.remaining + $23 > 0
             WHERE g.customer = $1 AND g.id = $22)"
    };
}
/// (When no grant row is written: $22 and $23 unused.)
macro_rules! no_grant_cte {
    () => {
        ", g AS (SELECT $22::uuid, $23::int8)"
    };
}
static FINISH: Stmt = Stmt { sql: finish_sql!(grant_cte!()), args: FINISH_ARGS };
/// FINISH when no grant row is written.
static FINISH_NO_GRANT: Stmt = Stmt { sql: finish_sql!(no_grant_cte!()), args: FINISH_ARGS };

/// A new hold's reservation row (`ResRow::Hold`), alone and as a CTE of FINISH ($27-$34).
static RES_INSERT: Stmt = Stmt {
    sql: "INSERT INTO billing.reservations (customer, id, amount, ttl, status, expires_at, accounts, amounts, hold_entry, created_at)
          VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9)",
    args: &[TEXTOID, UUIDOID, INT8OID, INTERVALOID, TIMESTAMPTZOID, UUIDARRAYOID, INT8ARRAYOID, UUIDOID, TIMESTAMPTZOID],
};
macro_rules! res_insert_cte {
    () => {
        ",
          r AS (
            INSERT INTO billing.reservations (customer, id, amount, ttl, status, expires_at, accounts, amounts, hold_entry, created_at)
            VALUES ($1, $27, $28, $29, 'active', $30, $31, $32, $33, $34))"
    };
}
const FINISH_HOLD_ARGS: &[pgrx::pg_sys::PgBuiltInOids] = &[
    TEXTOID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, BOOLOID, INT8OID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT8OID,
    INT8OID, TEXTOID, UUIDOID, UUIDOID, UUIDOID, UUIDARRAYOID, INT8ARRAYOID, JSONBOID, UUIDOID, INT8OID, UUIDOID, INT8OID, INT8OID, UUIDOID, INT8OID,
    INTERVALOID, TIMESTAMPTZOID, UUIDARRAYOID, INT8ARRAYOID, UUIDOID, TIMESTAMPTZOID,
];
static FINISH_HOLD: Stmt = Stmt { sql: finish_sql!(grant_cte!(), res_insert_cte!()), args: FINISH_HOLD_ARGS };
static FINISH_HOLD_NO_GRANT: Stmt = Stmt { sql: finish_sql!(no_grant_cte!(), res_insert_cte!()), args: FINISH_HOLD_ARGS };
/// The end of a hold (`ResRow::End`: settled or released), alone and as a CTE of FINISH
/// ($27-$32).
static RES_END: Stmt = Stmt {
    sql: "UPDATE billing.reservations SET status = $3, settled = $4, consumed_accounts = $5, consumed_amounts = $6, end_entry = $7
           WHERE customer = $1 AND id = $2",
    args: &[TEXTOID, UUIDOID, TEXTOID, INT8OID, UUIDARRAYOID, INT8ARRAYOID, UUIDOID],
};
macro_rules! res_end_cte {
    () => {
        ",
          r AS (
            UPDATE billing.reservations SET status = $28, settled = $29, consumed_accounts = $30, consumed_amounts = $31, end_entry = $32
             WHERE customer = $1 AND id = $27)"
    };
}
const FINISH_END_ARGS: &[pgrx::pg_sys::PgBuiltInOids] = &[
    TEXTOID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, BOOLOID, INT8OID, UUIDOID, TIMESTAMPTZOID, TEXTOID, INT8OID,
    INT8OID, TEXTOID, UUIDOID, UUIDOID, UUIDOID, UUIDARRAYOID, INT8ARRAYOID, JSONBOID, UUIDOID, INT8OID, UUIDOID, INT8OID, INT8OID, UUIDOID, TEXTOID,
    INT8OID, UUIDARRAYOID, INT8ARRAYOID, UUIDOID,
];
static FINISH_END: Stmt = Stmt { sql: finish_sql!(grant_cte!(), res_end_cte!()), args: FINISH_END_ARGS };
static FINISH_END_NO_GRANT: Stmt = Stmt { sql: finish_sql!(no_grant_cte!(), res_end_cte!()), args: FINISH_END_ARGS };

/// A reservation row an operation writes, held back (`Op::write_res`) so `finish` writes
/// it in its one statement (an executor run fewer for a reserve, a settle and a
/// release); any other statement run first writes it out, as the held-back entry.
pub enum ResRow {
    /// A new hold's row (status active); `at` its creation.
    Hold { id: Id, amount: i64, ttl: pgrx::datum::Interval, expires_at: Ts, lines: Vec<(Acct, i64)>, hold_entry: pgrx::Uuid, at: Ts },
    /// A hold's end: settled (for `settled`, having consumed `consumed`) or released.
    End { id: pgrx::Uuid, status: &'static str, settled: Option<i64>, consumed: Option<Vec<(Acct, i64)>>, end_entry: pgrx::Uuid },
}

impl ResRow {
    /// Its parameters after `customer`, in the order of RES_INSERT or RES_END (from $27
    /// in FINISH's variants), with the statement that writes it alone.
    fn args(self) -> (&'static Stmt, Vec<DatumWithOid<'static>>) {
        match self {
            ResRow::Hold { id, amount, ttl, expires_at, lines, hold_entry, at } => {
                let [accts, amounts] = line_params(&lines);
                (
                    &RES_INSERT,
                    vec![uuid(&id).into(), amount.into(), ttl.into(), ts(expires_at).into(), accts, amounts, hold_entry.into(), ts(at).into()],
                )
            }
            ResRow::End { id, status, settled, consumed, end_entry } => {
                let [accts, amounts] = consumed.map_or_else(no_line_params, |l| line_params(&l));
                let settled = settled.map_or_else(DatumWithOid::null::<i64>, |x| x.into());
                (&RES_END, vec![id.into(), status.into(), settled, accts, amounts, end_entry.into()])
            }
        }
    }
}
/// The balance after entry `$2` and the expiries that followed it (see `final_balance`).
/// The entry by the seq `$3` its id names if it is located (`entry_id`), else through the
/// partial index of the other ids.
static FINAL_BALANCE: Stmt = Stmt {
    sql: "SELECT balance_after FROM billing.journal
           WHERE customer = $1 AND ((seq = $3 AND entry_id = $2)
                                     OR (entry_id = $2 AND entry_id < 'ff000000-0000-0000-0000-000000000000'::uuid)
                                     OR (ref_entry = $2 AND kind = 'expiry'))
           ORDER BY seq DESC LIMIT 1",
    args: &[TEXTOID, UUIDOID, INT8OID],
};
static KEY: Stmt = Stmt { sql: "SELECT j FROM billing.journal j WHERE j.customer = $1 AND j.idempotency_key = $2", args: &[TEXTOID, TEXTOID] };
static KEY_USED: Stmt = Stmt { sql: "SELECT FROM billing.journal j WHERE j.customer = $1 AND j.idempotency_key = $2", args: &[TEXTOID, TEXTOID] };
macro_rules! spend_lookup_sql {
    () => {
        "SELECT c, k FROM billing.customers c
           LEFT JOIN billing.journal k ON k.customer = c.customer AND k.idempotency_key = $2
          WHERE c.customer = $1"
    };
}
/// What a spending operation reads once it holds the customer's lock, in one statement:
/// the customer row (as LOOKUP) and the entry under its idempotency key, each whole. The
/// grants are read only when the first one (`draw_left`, see `Op::take_from_head`) is
/// not enough.
static SPEND_LOOKUP: Stmt = Stmt { sql: spend_lookup_sql!(), args: &[TEXTOID, TEXTOID] };
/// SPEND_LOOKUP of a slot account, with the entry under the key in its customer's own
/// journal (`$3`) too: a key used before the customer was slotted, or by a call that
/// gathered the slots, lives there (one statement instead of two).
static SPEND_LOOKUP_SLOT: Stmt = Stmt {
    sql: "SELECT c, k, p FROM billing.customers c
            LEFT JOIN billing.journal k ON k.customer = c.customer AND k.idempotency_key = $2
            LEFT JOIN billing.journal p ON p.customer = $3 AND p.idempotency_key = $2
           WHERE c.customer = $1",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};
/// The row lock LOOKUP_XACT_SNAPSHOT takes, for a spending call that read its account with
/// SPEND_LOOKUP under a transaction snapshot (see `Op::lock_row`).
static LOCK_ROW: Stmt = Stmt { sql: "SELECT FROM billing.customers WHERE customer = $1 FOR NO KEY UPDATE", args: &[TEXTOID] };

/// A journal entry found under an idempotency key.
pub struct Keyed {
    pub entry_id: pgrx::Uuid,
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub metadata: serde_json::Value,
    pub grant_id: Option<pgrx::Uuid>,
    pub reservation_id: Option<pgrx::Uuid>,
    pub ref_entry: Option<pgrx::Uuid>,
}

/// `Op::open_as` of an account that is not a slot: its row (and the entry under the key)
/// read by their indexes (`direct`) instead of the lookup statement. None when the
/// indexes cannot be read so: the caller runs its statement.
#[allow(clippy::type_complexity)]
fn open_direct(c: &mut SpiClient<'_>, customer: &str, create: bool, spend_key: Option<&str>) -> Result<Option<Option<(Opened, Option<Keyed>)>>> {
    let id = direct::text(customer);
    let read = || match spend_key {
        None => direct::fetch(&[(&direct::CUSTOMER, &[id])]),
        Some(k) => direct::fetch(&[(&direct::CUSTOMER, &[id]), (&direct::JOURNAL_KEY, &[id, direct::text(k)])]),
    };
    let Some(mut rows) = read() else { return Ok(None) };
    // A new customer is made only when the read misses, as in `open_as`.
    if rows[0].is_none() && create {
        crate::pg::spi::run(c, &CREATE, &[customer.into()])?;
        let Some(again) = read() else { return Ok(None) };
        rows = again;
    }
    let Some(row) = crate::pg::whole_row::read_datum(rows[0], &CUSTOMER)? else { return Ok(Some(None)) };
    let keyed = match rows.get(1) {
        Some(k) => keyed_row(crate::pg::whole_row::read_datum(*k, &KEYED)?)?,
        None => None,
    };
    Ok(Some(Some((Opened::from_row(row)?, keyed))))
}

/// The journal entry read whole in column `ordinal` (`KEYED`), if there is one: NULL, or
/// the null-extended side of a LEFT JOIN, is none.
fn keyed_whole(t: &pgrx::spi::SpiTupleTable<'_>, ordinal: usize) -> Result<Option<Keyed>> {
    keyed_row(crate::pg::whole_row::read_opt(t, ordinal, &KEYED)?)
}

fn keyed_row(r: Option<crate::pg::whole_row::Row>) -> Result<Option<Keyed>> {
    let Some(r) = r else { return Ok(None) };
    let Some(entry_id) = r.get::<pgrx::Uuid>(0)? else { return Ok(None) };
    Ok(Some(Keyed {
        entry_id,
        kind: r.get(1)?.unwrap_or_default(),
        amount: r.get(2)?.unwrap_or(0),
        balance_after: r.get(3)?.unwrap_or(0),
        metadata: r.get::<JsonB>(4)?.map(|j| j.0).unwrap_or(serde_json::Value::Null),
        grant_id: r.get(5)?,
        reservation_id: r.get(6)?,
        ref_entry: r.get(7)?,
    }))
}

/// What to write with an entry besides the rules' lines.
#[derive(Default)]
pub struct Extra<'a> {
    pub key: Option<&'a str>,
    pub ref_entry: Option<pgrx::Uuid>,
    pub metadata: Option<serde_json::Value>,
    pub entry_id: Option<Id>,
}

pub struct Written {
    pub entry_id: pgrx::Uuid,
    pub balance_after: i64,
}

/// A customer locked for one operation.
pub struct Op<'a, 'c> {
    c: &'a mut SpiClient<'c>,
    pub customer: String,
    pub book: Book,
    pub frozen: bool,
    pub now: Ts,
    seq: i64,
    /// `seq` when the account was opened: anything after it was written by this call.
    seq0: i64,
    clock: Ts,
    next_event: Ts,
    grants_loaded: bool,
    /// The first grant in spending order and its remainder, as the customer row keeps them
    /// (`draw_grant`, `draw_left`; see `take_from_head`), when known.
    head: Option<(Id, i64)>,
    /// The book holds only that grant (`take_from_head`), not every live one.
    head_only: bool,
    holds_loaded: bool,
    ro: bool,
    grant_deltas: Vec<(Id, i64)>,
    /// Parts of `grant_deltas` already on their grants' rows (`row_has`).
    on_rows: Vec<(Id, i64)>,
    lapsed: Vec<(Id, Id)>,
    thresholds: Thresholds,
    /// Accounts of this customer (> 1: slotted, see `slots`), and on a slot account the
    /// customer it belongs to.
    pub slots: i32,
    pub slot_of: Option<String>,
    /// Credits taken from one grant and not yet written down on its row (see `finish`):
    /// the grant's remainder is its row's less this.
    draw: Option<(Id, i64)>,
    /// The account's number (`customers.num`), which its entry ids carry (`entry_id`).
    num: i64,
    /// The balance the low-balance and top-up thresholds are checked against, when it is
    /// not this account's own (a slotted customer's total, known only while gathered).
    pub threshold_balance: Option<i64>,
    /// The last entry written, held back so `finish` can write it in its one statement;
    /// any other statement run first writes it out (so reads always see it).
    pending: Option<Pending>,
    /// A reservation row held back as `pending` is (`write_res`).
    res: Option<ResRow>,
    /// This call took the account's lock (`lock_for_spend`), so `unlock` gives it back.
    took_lock: bool,
}

/// An account's customer row as an operation opens it (`Op::open_as`), taken apart.
pub struct Opened {
    book: Book,
    frozen: bool,
    seq: i64,
    clock: Ts,
    next_event: Ts,
    thresholds: Thresholds,
    /// Accounts of the customer (> 1: slotted), and on a slot account its customer.
    pub slots: i32,
    pub slot_of: Option<String>,
    draw: Option<(Id, i64)>,
    head: Option<(Id, i64)>,
    num: i64,
}

impl Opened {
    /// The customer row read whole in column `ordinal` of the table's current row.
    fn read(t: &pgrx::spi::SpiTupleTable<'_>, ordinal: usize) -> Result<Opened> {
        Self::from_row(crate::pg::whole_row::read(t, ordinal, &CUSTOMER)?)
    }

    fn from_row(r: crate::pg::whole_row::Row) -> Result<Opened> {
        let get = |i| -> Result<i64> { Ok(r.get::<i64>(i)?.unwrap_or(0)) };
        let draw_grant = r.get::<pgrx::Uuid>(13)?.map(|g| id_of(&g));
        Ok(Opened {
            book: Book { grants: vec![], holds: vec![], od: get(1)?, balance: get(0)?, overdraft_limit: get(2)? },
            frozen: r.get::<bool>(3)?.unwrap_or(false),
            seq: get(4)?,
            clock: r.get::<TimestampWithTimeZone>(5)?.map(micros).unwrap_or(i64::MIN),
            next_event: r.get::<TimestampWithTimeZone>(6)?.map(micros).unwrap_or(NEVER),
            thresholds: Thresholds {
                low: r.get::<i64>(7)?,
                low_notified: r.get::<bool>(8)?.unwrap_or(false),
                topup: r.get::<i64>(9)?,
                topup_notified: r.get::<bool>(10)?.unwrap_or(false),
            },
            slots: r.get::<i32>(11)?.unwrap_or(1),
            slot_of: r.get(12)?,
            draw: match (draw_grant, r.get::<i64>(14)?.unwrap_or(0)) {
                (Some(g), x) if x != 0 => Some((g, x)),
                _ => None,
            },
            head: draw_grant.zip(r.get::<i64>(15)?),
            num: get(16)?,
        })
    }
}

/// An account's row and the entry under a key, read ahead (`prefetch_spend`).
pub type Prefetched = (Opened, Option<Keyed>);

/// SPEND_LOOKUP for many (account, key) pairs in one statement (`prefetch_spend`). The
/// key's entry is found by (customer, key) through the key's index as a LATERAL lookup
/// (joined on `c.customer` instead, the planner read every entry of the customer).
static SPEND_LOOKUP_MANY: Stmt = Stmt {
    sql: "SELECT u.ord, c, k.k FROM unnest($1::text[], $2::text[]) WITH ORDINALITY u(customer, key, ord)
            JOIN billing.customers c ON c.customer = u.customer
            LEFT JOIN LATERAL (SELECT k FROM billing.journal k WHERE k.customer = u.customer AND k.idempotency_key = u.key) k ON true",
    args: &[TEXTARRAYOID, TEXTARRAYOID],
};

/// What `Op::lock_for_spend` reads, for a batch's first spend on each of its accounts, in
/// one statement (or by the indexes, `direct`, under one snapshot): the account's row and
/// the entry under the key, by position in `pairs` (None: no such account). The caller holds the accounts' locks (`lock_many`), so what
/// it read stays true until it writes to the account (`Op::open_prefetched`).
pub fn prefetch_spend(c: &mut SpiClient<'_>, pairs: &[(&str, &str)]) -> Result<Vec<Option<Prefetched>>> {
    let mut out: Vec<Option<Prefetched>> = (0..pairs.len()).map(|_| None).collect();
    if crate::cluster::citus() {
        // The accounts are on many shards, which Citus cannot join to an array in one
        // statement: each first item reads its own account, as later ones do.
        return Ok(out);
    }
    if direct::usable() {
        let values: Vec<[pg_sys::Datum; 2]> = pairs.iter().map(|(a, k)| [direct::text(a), direct::text(k)]).collect();
        let reads: Vec<(&direct::Index, &[pg_sys::Datum])> =
            values.iter().flat_map(|v| [(&direct::CUSTOMER, &v[..1]), (&direct::JOURNAL_KEY, &v[..])]).collect();
        if let Some(rows) = direct::fetch(&reads) {
            for (slot, pair) in out.iter_mut().zip(rows.chunks(2)) {
                if let Some(row) = pair[0] {
                    *slot = Some(prefetched(row, pair[1])?);
                }
            }
            return Ok(out);
        }
    }
    let (accounts, keys): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let mut t = crate::pg::spi::run(c, &SPEND_LOOKUP_MANY, &[accounts.into(), keys.into()])?;
    while t.next().is_some() {
        let ord = t.get::<i64>(1)?.unwrap_or(0) as usize;
        if let Some(slot) = ord.checked_sub(1).and_then(|i| out.get_mut(i)) {
            *slot = Some((Opened::read(&t, 2)?, keyed_whole(&t, 3)?));
        }
    }
    Ok(out)
}

/// What `prefetch_spend` reads for one account, taken from a row a caller read itself
/// under the account's lock (its customer row and the entry under the key, each a
/// composite value), for `debit_item`.
pub fn prefetched(row: pg_sys::Datum, keyed: Option<pg_sys::Datum>) -> Result<Prefetched> {
    let row = crate::pg::whole_row::read_value(row, &CUSTOMER)?;
    Ok((Opened::from_row(row)?, keyed_row(crate::pg::whole_row::read_datum(keyed, &KEYED)?)?))
}

/// A journal row not yet inserted.
struct Pending {
    seq: i64,
    entry_id: pgrx::Uuid,
    at: Ts,
    kind: &'static str,
    amount: i64,
    balance_after: i64,
    key: Option<String>,
    grant: Option<pgrx::Uuid>,
    hold: Option<pgrx::Uuid>,
    ref_entry: Option<pgrx::Uuid>,
    accts: Vec<pgrx::Uuid>,
    deltas: Vec<i64>,
    metadata: serde_json::Value,
}

impl Pending {
    /// Its 13 columns after `customer`, in the journal's order (NULLs for no entry).
    fn args(p: Option<Pending>) -> [DatumWithOid<'static>; 13] {
        use DatumWithOid as D;
        let Some(p) = p else {
            let [no_accts, no_deltas] = no_line_params();
            return [
                D::null::<i64>(),
                D::null::<pgrx::Uuid>(),
                D::null::<TimestampWithTimeZone>(),
                D::null::<&str>(),
                D::null::<i64>(),
                D::null::<i64>(),
                D::null::<&str>(),
                D::null::<pgrx::Uuid>(),
                D::null::<pgrx::Uuid>(),
                D::null::<pgrx::Uuid>(),
                no_accts,
                no_deltas,
                D::null::<JsonB>(),
            ];
        };
        let opt = |u: Option<pgrx::Uuid>| u.map_or_else(D::null::<pgrx::Uuid>, |u| u.into());
        [
            p.seq.into(),
            p.entry_id.into(),
            ts(p.at).into(),
            p.kind.into(),
            p.amount.into(),
            p.balance_after.into(),
            p.key.map_or_else(D::null::<String>, |k| k.into()),
            opt(p.grant),
            opt(p.hold),
            opt(p.ref_entry),
            crate::pg::spi::uuid_array(&p.accts),
            crate::pg::spi::int8_array(&p.deltas),
            crate::pg::spi::jsonb_param(p.metadata),
        ]
    }
}

impl<'a, 'c> Op<'a, 'c> {
    /// Locks the customer (creating its row when `create`), or `Ok(None)` if unknown.
    /// The lock is an advisory lock on the customer id, held to the end of the
    /// transaction, rather than `SELECT ... FOR UPDATE` of the row: it excludes the same
    /// writers, but locking a row writes a WAL record and dirties its page on every debit
    /// (and turns into a MultiXact beside a grant's foreign-key check). Every writer of a
    /// customer's ledger columns goes through here. The reads that follow take a fresh
    /// snapshot (mutating plans, READ COMMITTED), so they see what the previous holder
    /// committed; under REPEATABLE READ the row is locked too (LOOKUP_XACT_SNAPSHOT).
    pub fn lock(c: &'a mut SpiClient<'c>, customer: &str, now: Ts, create: bool) -> Result<Option<Self>> {
        if !lock_customer(c, customer)? && create {
            // On Citus: a row to lock first, then its lock (a concurrent creator's
            // INSERT waits for the other to commit, and both then lock the one row).
            crate::pg::spi::run(c, &CREATE, &[customer.into()])?;
            lock_customer(c, customer)?;
        }
        Ok(Self::open(c, customer, now, create, false, None)?.map(|(op, _)| op))
    }

    /// Reads a customer without locking, for callers that write nothing.
    pub fn read(c: &'a mut SpiClient<'c>, customer: &str, now: Ts) -> Result<Self> {
        Ok(Self::open(c, customer, now, false, true, None)?.ok_or_else(|| unknown_customer(customer))?.0)
    }

    /// Locks `account` (as `lock`) and opens it for an operation that spends under
    /// idempotency key `key`, finding the entry already made under the key in the same
    /// statement. On a slot account, `parent` is its customer, whose own journal is
    /// searched for the key as well (the slot's entry first). Grants are read later, if at
    /// all (`draw`). `Ok(None)` if there is no such account (a route `slots` has to
    /// correct): its lock is then given back if this call took it.
    // (Inlined, so the account is made where the caller keeps it instead of being copied
    // on the way: a hundred instructions a debit.)
    #[inline(always)]
    pub fn lock_for_spend(
        c: &'a mut SpiClient<'c>,
        account: &str,
        parent: Option<&str>,
        now: Ts,
        key: &str,
    ) -> Result<Option<(Self, Option<Keyed>)>> {
        // On Citus the row lock (which cannot be given back: nothing to give back either
        // when the row does not exist).
        let took_lock = if crate::cluster::citus() {
            lock_customer(c, account)?;
            false
        } else {
            xact_lock_new(LockClass::Customer, &[account])
        };
        let mut found = Self::open_as(c, account, now, false, false, Some(key), parent);
        match &mut found {
            Ok(Some((op, _))) => op.took_lock = took_lock,
            Ok(None) if took_lock => xact_unlock(LockClass::Customer, &[account]),
            _ => {}
        }
        found
    }

    /// Leaves an account a spending call read and wrote nothing to (the wrong account, or
    /// a short slot): gives back its lock if `lock_for_spend` took it (a transaction that
    /// took it in an earlier statement keeps it), and returns the client.
    pub fn unlock(self) -> &'a mut SpiClient<'c> {
        if self.took_lock {
            xact_unlock(LockClass::Customer, &[&self.customer]);
        }
        self.c
    }

    /// `lock_existing` for a caller that holds the customer's lock already.
    pub fn lock_existing_held(c: &'a mut SpiClient<'c>, customer: &str, now: Ts) -> Result<Self> {
        Ok(Self::open(c, customer, now, false, false, None)?.ok_or_else(|| unknown_customer(customer))?.0)
    }

    fn open(
        c: &'a mut SpiClient<'c>,
        customer: &str,
        now: Ts,
        create: bool,
        ro: bool,
        spend_key: Option<&str>,
    ) -> Result<Option<(Self, Option<Keyed>)>> {
        Self::open_as(c, customer, now, create, ro, spend_key, None)
    }

    fn open_as(
        c: &'a mut SpiClient<'c>,
        customer: &str,
        now: Ts,
        create: bool,
        ro: bool,
        spend_key: Option<&str>,
        parent: Option<&str>,
    ) -> Result<Option<(Self, Option<Keyed>)>> {
        let lookup = |c: &mut SpiClient<'c>| match (ro, spend_key) {
            (true, _) => run_ro(c, &LOOKUP, &[customer.into()]),
            (false, None) => {
                let s = if xact_snapshot() { &LOOKUP_XACT_SNAPSHOT } else { &LOOKUP };
                crate::pg::spi::run(c, s, &[customer.into()])
            }
            // Under a transaction snapshot the caller locks the row once it knows the
            // account is the right one (`lock_row`).
            (false, Some(k)) => match parent {
                None => crate::pg::spi::run(c, &SPEND_LOOKUP, &[customer.into(), k.into()]),
                Some(p) => crate::pg::spi::run(c, &SPEND_LOOKUP_SLOT, &[customer.into(), k.into(), p.into()]),
            },
        };
        if !ro && parent.is_none() && direct::usable() {
            if let Some(found) = open_direct(c, customer, create, spend_key)? {
                return Ok(found.map(|(opened, keyed)| (Self::from_opened(c, customer, now, false, opened), keyed)));
            }
        }
        let mut t = lookup(c)?;
        // A new customer is made only when the lookup misses (one statement fewer for
        // the customers that exist). Its INSERT waits for a concurrent one of the same
        // customer, and the second lookup, a new snapshot, sees the row either way.
        if t.is_empty() && create {
            crate::pg::spi::run(c, &CREATE, &[customer.into()])?;
            t = lookup(c)?;
        }
        if t.is_empty() {
            return Ok(None);
        }
        let t = t.first();
        let opened = Opened::read(&t, 1)?;
        // The entry under the key: the account's own (column 2), else, on a slot
        // account, its customer's (3).
        let keyed = match (spend_key, parent) {
            (None, _) => None,
            (Some(_), None) => keyed_whole(&t, 2)?,
            (Some(_), Some(_)) => match keyed_whole(&t, 2)? {
                Some(k) => Some(k),
                None => keyed_whole(&t, 3)?,
            },
        };
        Ok(Some((Self::from_opened(c, customer, now, ro, opened), keyed)))
    }

    fn from_opened(c: &'a mut SpiClient<'c>, customer: &str, now: Ts, ro: bool, o: Opened) -> Self {
        Op {
            c,
            customer: customer.to_string(),
            book: o.book,
            frozen: o.frozen,
            // Time never runs backwards within one customer's journal.
            now: now.max(o.clock),
            seq: o.seq,
            seq0: o.seq,
            clock: o.clock,
            next_event: o.next_event,
            grants_loaded: false,
            head: o.head,
            head_only: false,
            holds_loaded: false,
            ro,
            grant_deltas: vec![],
            on_rows: vec![],
            lapsed: vec![],
            thresholds: o.thresholds,
            slots: o.slots,
            slot_of: o.slot_of,
            draw: o.draw,
            num: o.num,
            threshold_balance: None,
            pending: None,
            res: None,
            took_lock: false,
        }
    }

    /// Opens for a spending call an account whose lock the caller holds (`lock_many`) and
    /// whose row and entry under the key it read since (`prefetch_spend`), nothing written
    /// to it in between: `lock_for_spend` without its statement.
    pub fn open_prefetched(c: &'a mut SpiClient<'c>, account: &str, now: Ts, o: Opened) -> Self {
        Self::from_opened(c, account, now, false, o)
    }

    pub fn lock_existing(c: &'a mut SpiClient<'c>, customer: &str, now: Ts) -> Result<Self> {
        Self::lock(c, customer, now, false)?.ok_or_else(|| unknown_customer(customer))
    }

    /// Refuses a slot account named where a customer is expected: its credits belong to
    /// the customer, and every call goes through the customer.
    pub fn not_a_slot(&self) -> Result<()> {
        match &self.slot_of {
            None => Ok(()),
            Some(of) => Err(BillingError::invalid(format!("\"{}\" is a slot account of customer \"{of}\"; name the customer", self.customer))),
        }
    }

    /// Holds back a reservation row for `finish` to write in its one statement.
    pub fn write_res(&mut self, r: ResRow) -> Result<()> {
        self.flush_res()?;
        self.res = Some(r);
        Ok(())
    }

    /// Writes out the held-back reservation row, if any.
    fn flush_res(&mut self) -> Result<()> {
        if let Some(r) = self.res.take() {
            let (s, rest) = r.args();
            let mut args: Vec<DatumWithOid> = Vec::with_capacity(rest.len() + 1);
            args.push(self.customer.as_str().into());
            args.extend(rest);
            crate::pg::spi::run(self.c, s, &args)?;
        }
        Ok(())
    }

    pub fn run(&mut self, s: &Stmt, args: &[DatumWithOid]) -> Result<pgrx::spi::SpiTupleTable<'c>> {
        self.flush()?;
        if self.ro {
            run_ro(self.c, s, args)
        } else {
            crate::pg::spi::run(self.c, s, args)
        }
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Under REPEATABLE READ and SERIALIZABLE, locks the account's row as LOOKUP_XACT_SNAPSHOT
    /// does: a row changed since the snapshot raises 40001 here, before the call decides
    /// anything on what it read. A no-op under READ COMMITTED.
    pub fn lock_row(&mut self) -> Result<()> {
        if xact_snapshot() {
            let customer = self.customer.clone();
            crate::pg::spi::run(self.c, &LOCK_ROW, &[customer.as_str().into()])?;
        }
        Ok(())
    }

    /// Whether this call has written a journal entry (catching up included).
    pub fn wrote(&self) -> bool {
        self.seq != self.seq0
    }

    pub fn clock(&self) -> Ts {
        self.clock
    }

    /// Writes out the held-back entry, if any.
    fn flush(&mut self) -> Result<()> {
        if let Some(p) = self.pending.take() {
            let [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = Pending::args(Some(p));
            let args = [self.customer.as_str().into(), a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13];
            crate::pg::spi::run(self.c, &INSERT_ENTRY, &args)?;
        }
        self.flush_res()
    }

    pub fn find_key(&mut self, key: &str) -> Result<Option<Keyed>> {
        let customer = self.customer.clone();
        self.find_key_in(&customer, key)
    }

    /// The entry under `key` in another account's journal (of the same customer).
    pub fn find_key_in(&mut self, account: &str, key: &str) -> Result<Option<Keyed>> {
        // By the key's index (`direct`) where it can be read so, as `open_direct` reads it.
        if direct::usable() {
            self.flush()?;
            let read = [(&direct::JOURNAL_KEY, &[direct::text(account), direct::text(key)][..])];
            if let Some(rows) = if self.ro { direct::fetch_ro(&read) } else { direct::fetch(&read) } {
                return keyed_row(crate::pg::whole_row::read_datum(rows[0], &KEYED)?);
            }
        }
        let t = self.run(&KEY, &[account.into(), key.into()])?;
        if t.is_empty() {
            return Ok(None);
        }
        keyed_whole(&t.first(), 1)
    }

    fn read_grants(&mut self, t: pgrx::spi::SpiTupleTable) -> Result<Vec<Grant>> {
        let mut out = Vec::new();
        for r in t {
            let g = Grant {
                id: id_of(&r.get::<pgrx::Uuid>(1)?.unwrap_or_else(crate::pg::spi::nil)),
                remaining: r.get(2)?.unwrap_or(0),
                expires_at: r.get::<TimestampWithTimeZone>(3)?.map(micros).unwrap_or(NEVER),
                priority: r.get(4)?.unwrap_or(0),
                seq: r.get(5)?.unwrap_or(0),
            };
            out.push(drawn(g, self.draw));
        }
        Ok(out)
    }

    /// Brings the journal up to `now`: expiries of grants and lapses of holds that
    /// happened since the last entry are written at their own instants. Cheap when
    /// nothing is due (the customer row says when the next thing expires).
    pub fn catch_up(&mut self) -> Result<()> {
        if self.now < self.next_event {
            return Ok(());
        }
        self.load_all()?;
        // The rules decide on a copy; `write` then applies each entry to the book once.
        let entries = self.book.clone().catch_up(self.now, self.clock);
        for e in entries {
            let w = self.write(&e, Extra::default())?;
            if let (Kind::Release, Some(h)) = (e.kind, e.hold) {
                self.remove_hold(&h);
                self.lapsed.push((h, id_of(&w.entry_id)));
            }
        }
        Ok(())
    }

    /// Loads every open grant and active hold, so the book knows the next expiry exactly.
    fn load_all(&mut self) -> Result<()> {
        self.drop_head_only()?;
        if !self.grants_loaded {
            let t = self.run(&GRANTS_OPEN, &[self.customer.as_str().into()])?;
            self.book.grants = self.read_grants(t)?;
            self.grants_loaded = true;
        }
        if !self.holds_loaded {
            let t = self.run(&HOLDS_ACTIVE, &[self.customer.as_str().into()])?;
            let mut holds = Vec::new();
            for r in t {
                let id = id_of(&r.get::<pgrx::Uuid>(1)?.unwrap_or_else(crate::pg::spi::nil));
                let accts: Vec<pgrx::Uuid> = r.get(3)?.unwrap_or_default();
                let amounts: Vec<i64> = r.get(4)?.unwrap_or_default();
                holds.push(Hold {
                    id,
                    lines: decode_lines(&accts, &amounts, Some(&id)),
                    expires_at: r.get::<TimestampWithTimeZone>(2)?.map(micros).unwrap_or(NEVER),
                });
            }
            // A lapsing hold gives credits back to the grants it took them from, which may
            // be spent (not open) by now: the book must know them to expire what returns.
            let held: Vec<Id> =
                holds.iter().flat_map(|h| h.lines.iter()).filter_map(|l| if let Acct::Grant(g) = l.0 { Some(g) } else { None }).collect();
            self.book.holds = holds;
            self.holds_loaded = true;
            self.load_grants(&held)?;
        }
        Ok(())
    }

    /// The lines of a spend of `amount` when the first grant in spending order covers it
    /// alone, without reading the grants: the customer row keeps that grant and its
    /// remainder (`draw_left`) while they are known, and the allocation from it is then
    /// exactly what `Book::allocate` over every live grant would give. `None`: read them.
    pub fn take_from_head(&mut self, amount: i64) -> Option<Vec<(Acct, i64)>> {
        let (id, left) = self.usable_head()?;
        if amount > left || amount > self.book.balance.saturating_add(self.book.overdraft_limit) {
            return None;
        }
        // Only its remainder matters to this call: it spends (no credits go back, so its
        // expiry, beyond next_event, is not needed), and nothing loads grants after.
        self.book.grants = vec![Grant { id, remaining: left, expires_at: self.next_event, priority: 0, seq: 0 }];
        self.head_only = true;
        Some(vec![(Acct::Grant(id), amount)])
    }

    /// The first grant the customer row keeps, when the book has read no grant and nothing
    /// is due (so every grant with credits is live and that one is first among them).
    fn usable_head(&self) -> Option<(Id, i64)> {
        self.head.filter(|_| !self.grants_loaded && self.book.grants.is_empty() && self.now < self.next_event)
    }

    /// Leaves head-only mode before grants are read (nothing written in it yet).
    fn drop_head_only(&mut self) -> Result<()> {
        if self.head_only {
            if self.wrote() {
                return Err(BillingError::new(crate::error::INTERNAL, "billing: grants read after a head-only write"));
            }
            self.book.grants.clear();
            self.head_only = false;
        }
        Ok(())
    }

    /// Makes sure the book holds the live grants in spending order.
    pub fn load_live_grants(&mut self) -> Result<()> {
        self.drop_head_only()?;
        if !self.grants_loaded {
            let t = self.run(&GRANTS_LIVE, &[self.customer.as_str().into(), ts(self.now).into()])?;
            self.book.grants = self.read_grants(t)?;
            self.grants_loaded = true;
        }
        Ok(())
    }

    /// Makes sure the book knows these grants (a refund or release may return credits to
    /// grants that are spent or expired, and so not loaded).
    pub fn load_grants(&mut self, ids: &[Id]) -> Result<()> {
        self.drop_head_only()?;
        let missing: Vec<pgrx::Uuid> = ids.iter().filter(|id| !self.book.grants.iter().any(|g| &g.id == *id)).map(uuid).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let t = self.run(&GRANTS_BY_ID, &[self.customer.as_str().into(), crate::pg::spi::uuid_array(&missing)])?;
        let more = self.read_grants(t)?;
        self.book.grants.extend(more);
        self.book.sort();
        Ok(())
    }

    /// `load_grants` for grants that credits go back to, except when they are only the
    /// first grant the customer row keeps (`take_from_head`) with credits left: that one is
    /// live until the next event and expires no sooner, so returning credits to it needs
    /// neither its expiry nor an expiry entry, and `finish` keeps its remainder from the
    /// row. (A settle or release of a hold the first grant covered: one statement fewer.)
    pub fn load_returned_grants(&mut self, ids: &[Id]) -> Result<()> {
        match self.usable_head() {
            Some((h, left)) if left > 0 && ids.iter().all(|id| *id == h) => Ok(()),
            _ => self.load_grants(ids),
        }
    }

    /// The grants these mirrors (of a slot account) hold credits of.
    pub fn origins(&mut self, ids: &[Id]) -> Result<Vec<(Id, Id)>> {
        let ids: Vec<pgrx::Uuid> = ids.iter().map(uuid).collect();
        let t = self.run(&ORIGINS, &[self.customer.as_str().into(), crate::pg::spi::uuid_array(&ids)])?;
        let mut out = vec![];
        for r in t {
            let id = r.get::<pgrx::Uuid>(1)?.unwrap_or_else(crate::pg::spi::nil);
            let origin = r.get::<pgrx::Uuid>(2)?.unwrap_or_else(crate::pg::spi::nil);
            out.push((id_of(&id), id_of(&origin)));
        }
        Ok(out)
    }

    pub fn add_grant(&mut self, g: Grant) {
        self.book.grants.push(g);
        self.book.sort();
    }

    pub fn add_hold(&mut self, h: Hold) {
        self.next_event = self.next_event.min(h.expires_at);
        self.book.holds.push(h);
    }

    pub fn remove_hold(&mut self, id: &Id) {
        self.book.holds.retain(|h| &h.id != id);
    }

    pub fn next_seq(&self) -> i64 {
        self.seq + 1
    }

    /// The id of a hold this account is about to make: located as entry ids are
    /// (`entry_id`), by the seq after the account's last entry. The hold's own entry
    /// takes that seq or a later one in the same call, so no later hold of the account
    /// gets it again (a call that made no hold left nothing with its id).
    pub fn hold_id(&self) -> Id {
        self.entry_id_at(self.next_seq())
    }

    /// The id of this account's entry `seq`: located (see `entry_id`), so finding it by id
    /// needs no index; a random one if the number or seq outgrew the layout.
    pub fn entry_id_at(&self, seq: i64) -> Id {
        // The random bits only keep ids of two databases apart: (num, seq) is unique.
        let mut r = [0u8; 5];
        crate::pg::spi::quick_random_bytes(&mut r);
        super::entry_id::located(self.num, seq, r).unwrap_or_else(new_id)
    }

    /// Appends one entry to the journal and applies it to the book.
    pub fn write(&mut self, e: &Entry, x: Extra) -> Result<Written> {
        let amount = e.amount();
        let balance_after = self
            .book
            .balance
            .checked_add(amount)
            .ok_or_else(|| BillingError::new(crate::error::OVERFLOW, format!("balance of customer \"{}\" would overflow", self.customer)))?;
        for &(a, d) in &e.lines {
            if let Acct::Grant(id) = a {
                if let Some(t) = self.grant_deltas.iter_mut().find(|t| t.0 == id) {
                    t.1 += d;
                } else {
                    self.grant_deltas.push((id, d));
                }
                // Credits going back to a live grant make its expiry an event again.
                if d > 0 {
                    if let Some(g) = self.book.grants.iter().find(|g| g.id == id) {
                        self.next_event = self.next_event.min(g.expires_at);
                    }
                }
            }
        }
        self.book.apply(&e.lines);
        self.seq += 1;
        self.clock = self.clock.max(e.at);
        let entry_id = uuid(&x.entry_id.unwrap_or_else(|| self.entry_id_at(self.seq)));
        let (accts, deltas) = encode_lines(&e.lines);
        self.flush()?;
        self.pending = Some(Pending {
            seq: self.seq,
            entry_id,
            at: e.at,
            kind: e.kind.as_str(),
            amount,
            balance_after,
            key: x.key.map(str::to_string),
            grant: e.grant.map(|g| uuid(&g)),
            hold: e.hold.map(|h| uuid(&h)),
            ref_entry: x.ref_entry,
            accts,
            deltas,
            metadata: x.metadata.unwrap_or_else(|| serde_json::json!({})),
        });
        Ok(Written { entry_id, balance_after })
    }

    /// Writes an entry, then expires at once whatever it returned to grants that have
    /// already expired (a refund or release onto an expired grant is recorded, and does
    /// not become spendable).
    pub fn write_and_settle_expired(&mut self, e: &Entry, x: Extra) -> Result<Written> {
        let w = self.write(e, x)?;
        let returned: Vec<Id> = e.lines.iter().filter_map(|&(a, d)| if let (Acct::Grant(id), true) = (a, d > 0) { Some(id) } else { None }).collect();
        let now = self.now;
        let mut after = None;
        for id in returned {
            let expired = self.book.grants.iter().find(|g| g.id == id).filter(|g| !g.live(now) && g.remaining > 0).cloned();
            if let Some(g) = expired {
                let ex = Entry { kind: Kind::Expiry, at: now, lines: vec![(Acct::Grant(g.id), -g.remaining)], grant: Some(g.id), hold: None };
                // ref_entry ties it to the entry that returned the credits, so a replay of
                // that entry reports the same final balance (see `final_balance`).
                after = Some(self.write(&ex, Extra { ref_entry: Some(w.entry_id), ..Default::default() })?);
            }
        }
        Ok(Written { entry_id: w.entry_id, balance_after: after.map_or(w.balance_after, |a| a.balance_after) })
    }

    /// The balance after an operation that wrote `entry` (and perhaps the expiry rows
    /// that followed it): what a replay of that operation returns.
    pub fn final_balance(&mut self, entry: &pgrx::Uuid) -> Result<i64> {
        let customer = self.customer.clone();
        let seq = super::entry_id::locate(&id_of(entry)).map(|(_, seq)| seq);
        let t = self.run(&FINAL_BALANCE, &[customer.as_str().into(), (*entry).into(), seq.into()])?;
        Ok(t.first().get::<i64>(1)?.unwrap_or(0))
    }

    /// Writes the last entry, grant remainders, lapsed holds and the customer row; returns
    /// the client, for a caller that goes on to another account.
    pub fn finish(self) -> Result<&'a mut SpiClient<'c>> {
        self.finish_into(None)
    }

    /// `finish`, keeping the last entry (when it has one line), the grants' remainders
    /// and the customer row in `later` (a batch's, written for many accounts at once)
    /// instead of writing them. What must happen now (lapsed holds, outbox rows) does.
    pub fn finish_into(mut self, later: Option<&mut super::deferred::Deferred>) -> Result<&'a mut SpiClient<'c>> {
        if !self.lapsed.is_empty() {
            let (ids, es): (Vec<pgrx::Uuid>, Vec<pgrx::Uuid>) = self.lapsed.iter().map(|(h, e)| (uuid(h), uuid(e))).unzip();
            self.run(&HOLDS_LAPSED, &[self.customer.as_str().into(), crate::pg::spi::uuid_array(&ids), crate::pg::spi::uuid_array(&es)])?;
        }
        // With everything loaded the next expiry is known exactly; otherwise keep the
        // earlier bound, lowered by whatever this operation added.
        let next = if self.grants_loaded && self.holds_loaded { self.book.next_event() } else { self.next_event };
        // Crossing below a threshold writes one outbox row; going back above re-arms it.
        let mut th = self.thresholds;
        let balance = self.threshold_balance.unwrap_or(self.book.balance);
        if self.slots > 1 && self.threshold_balance.is_none() {
            // A slotted customer's own account holds a share: its total is known when a
            // call gathers the slots, and the thresholds are checked then.
            th.low = None;
            th.topup = None;
        }
        if let Some(t) = th.low {
            if balance < t && !th.low_notified {
                self.run(&LOW_BALANCE, &[self.customer.as_str().into(), balance.into(), t.into()])?;
                crate::access::outbox::wake();
            }
            th.low_notified = balance < t;
        }
        if let Some(t) = th.topup {
            if balance < t && !th.topup_notified {
                self.flush()?;
                emit_topup(self.c, &self.customer, self.now)?;
            }
            th.topup_notified = balance < t;
        }
        // A debit that draws from one grant only, leaving it credits, does not update the
        // grant's row: the customer row keeps the running draw (one row written instead of
        // two). Anything else writes the draw down with its own deltas.
        let mut grant_deltas: Vec<(Id, i64)> = self.grant_deltas.iter().copied().filter(|d| d.1 != 0).collect();
        let mut draw = self.draw;
        // (Folding the draw into a delta may cancel it: zero deltas are dropped below.)
        let left = |id: &Id| self.book.grants.iter().find(|g| &g.id == id).map_or(0, |g| g.remaining);
        match (grant_deltas.as_slice(), draw) {
            ([(g, d)], None) if *d < 0 && left(g) > 0 => {
                draw = Some((*g, -d));
                grant_deltas.clear();
            }
            ([(g, d)], Some((dg, x))) if *d < 0 && *g == dg && left(g) > 0 => {
                draw = Some((dg, x - d));
                grant_deltas.clear();
            }
            // Credits going back (a settle's unused part, a release) within what is drawn.
            ([(g, d)], Some((dg, x))) if *d > 0 && *g == dg && *d <= x => {
                draw = (x - d > 0).then_some((dg, x - d));
                grant_deltas.clear();
            }
            ([], _) => {}
            (_, Some((dg, x))) => {
                match grant_deltas.iter_mut().find(|t| t.0 == dg) {
                    Some(t) => t.1 -= x,
                    None => grant_deltas.push((dg, -x)),
                }
                draw = None;
            }
            (_, None) => {}
        }
        // The customer row keeps the first grant in spending order (as draw_grant, with or
        // without a pending draw) and its remainder, when known (see `take_from_head`).
        let (draw_grant, draw, draw_left) = match (draw, self.head_after(next)) {
            (Some((g, x)), Some((h, left))) if g == h => (Some(g), x, Some(left)),
            (None, Some((h, left))) => (Some(h), 0, Some(left)),
            (d, _) => (d.map(|d| d.0), d.map_or(0, |d| d.1), None),
        };
        for (id, d) in &self.on_rows {
            match grant_deltas.iter_mut().find(|t| t.0 == *id) {
                Some(t) => t.1 -= d,
                None => grant_deltas.push((*id, -d)),
            }
        }
        let mut deltas: Vec<(pgrx::Uuid, i64)> = grant_deltas.iter().filter(|d| d.1 != 0).map(|(i, d)| (uuid(i), *d)).collect();
        if let Some(later) = later.filter(|_| self.pending.as_ref().is_none_or(|p| p.accts.len() == 1)) {
            self.flush_res()?;
            let entry = self.pending.take().map(|p| super::deferred::Entry {
                seq: p.seq,
                entry_id: p.entry_id,
                at: p.at,
                kind: p.kind,
                amount: p.amount,
                balance_after: p.balance_after,
                key: p.key,
                grant: p.grant,
                hold: p.hold,
                ref_entry: p.ref_entry,
                acct: p.accts[0],
                delta: p.deltas[0],
                metadata: p.metadata,
            });
            let row = super::deferred::Row {
                balance: self.book.balance,
                od: self.book.od,
                seq: self.seq,
                last_at: self.clock,
                next_event_at: next,
                low_notified: th.low_notified,
                topup_notified: th.topup_notified,
                draw_grant: draw_grant.map(|g| uuid(&g)),
                draw,
                draw_left,
            };
            later.keep(&self.customer, entry, deltas, row);
            return Ok(self.c);
        }
        let last = deltas.pop();
        for (id, d) in deltas {
            crate::pg::spi::run(self.c, &GRANT_DELTA, &[self.customer.as_str().into(), id.into(), d.into()])?;
        }
        let [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = Pending::args(self.pending.take());
        let base: [DatumWithOid; 26] = [
            self.customer.as_str().into(),
            self.book.balance.into(),
            self.book.od.into(),
            self.seq.into(),
            ts(self.clock).into(),
            ts(next).into(),
            th.low_notified.into(),
            th.topup_notified.into(),
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            a8,
            a9,
            a10,
            a11,
            a12,
            a13,
            last.map_or_else(DatumWithOid::null::<pgrx::Uuid>, |(id, _)| id.into()),
            last.map_or(0, |(_, d)| d).into(),
            draw_grant.map_or_else(DatumWithOid::null::<pgrx::Uuid>, |g| uuid(&g).into()),
            draw.into(),
            draw_left.map_or_else(DatumWithOid::null::<i64>, |l| l.into()),
        ];
        // Without a grant row to write, the statement without the grant update (one plan
        // node fewer to set up); a held-back reservation row as one more CTE.
        let grant = last.is_some();
        match self.res.take() {
            None => crate::pg::spi::run(self.c, if grant { &FINISH } else { &FINISH_NO_GRANT }, &base)?,
            Some(r) => {
                let s = match (&r, grant) {
                    (ResRow::Hold { .. }, true) => &FINISH_HOLD,
                    (ResRow::Hold { .. }, false) => &FINISH_HOLD_NO_GRANT,
                    (ResRow::End { .. }, true) => &FINISH_END,
                    (ResRow::End { .. }, false) => &FINISH_END_NO_GRANT,
                };
                let mut args: Vec<DatumWithOid> = Vec::from(base);
                args.extend(r.args().1);
                crate::pg::spi::run(self.c, s, &args)?
            }
        };
        Ok(self.c)
    }

    /// The first grant in spending order with credits, and its remainder, once this call's
    /// entries are applied, if known: exactly when the book holds every live grant, else
    /// from the row's (when this call moved no other grant's credits). Only while nothing
    /// is due (`now < next`): then every grant with credits is live, so the first one in
    /// order stays first until a call changes the grants, and that call writes it again.
    fn head_after(&self, next: Ts) -> Option<(Id, i64)> {
        if self.now >= next {
            return None;
        }
        if self.grants_loaded {
            return self
                .book
                .grants
                .iter()
                .filter(|g| g.live(self.now) && g.remaining > 0)
                .min_by_key(|g| g.order_key())
                .map(|g| (g.id, g.remaining));
        }
        let (h, mut left) = self.head?;
        for &(id, d) in &self.grant_deltas {
            if id == h {
                left += d;
            } else if d != 0 {
                return None;
            }
        }
        (left > 0).then_some((h, left))
    }

    /// Says that grant `id`'s row, inserted by this call, already holds `delta` of what
    /// this call's entries move it by: `finish` writes only the rest.
    pub fn row_has(&mut self, id: Id, delta: i64) {
        self.on_rows.push((id, delta));
    }

    /// Lowers the next-event bound for something added outside `write` (a new grant).
    pub fn note_expiry(&mut self, at: Ts) {
        self.next_event = self.next_event.min(at);
    }

    /// The balance as of `now` without writing anything (for read-only callers).
    pub fn peek_balance(&mut self) -> Result<i64> {
        if self.now < self.next_event {
            return Ok(self.book.balance);
        }
        self.load_all()?;
        let mut b = self.book.clone();
        b.catch_up(self.now, self.clock);
        Ok(b.balance)
    }
}

/// Whether the transaction reads through one snapshot (REPEATABLE READ, SERIALIZABLE).
fn xact_snapshot() -> bool {
    (unsafe { pg_sys::XactIsoLevel }) >= pg_sys::XACT_REPEATABLE_READ as i32
}

/// A grant as its row says, less what the customer row says was drawn from it.
fn drawn(mut g: Grant, draw: Option<(Id, i64)>) -> Grant {
    if let Some((id, x)) = draw {
        if id == g.id {
            g.remaining -= x;
        }
    }
    g
}

/// Takes the customer's lock (see `Op::lock`) without reading its row, for writers that
/// only need the exclusion.
/// Locks one customer's ledger to the end of the transaction: every writer of a
/// customer's balance goes through here (or `Op::lock_for_spend`). On one server, an
/// advisory lock on the customer id; on a server running Citus, the customer's row, which
/// excludes across nodes (`crate::cluster`). False when, on Citus, there is no row to lock.
pub fn lock_customer(c: &mut SpiClient<'_>, customer: &str) -> Result<bool> {
    if crate::cluster::citus() {
        Ok(!crate::pg::spi::run(c, &LOCK_ROW, &[customer.into()])?.is_empty())
    } else {
        advisory_lock(customer);
        Ok(true)
    }
}

/// The advisory lock of one account (a customer, or a slot account): the customer lock on
/// one server, and the lock the slotted customers' own paths (`slots`) take directly;
/// slots are refused on Citus (a slot account would be on another shard).
pub fn advisory_lock(account: &str) {
    crate::pg::spi::xact_lock(crate::pg::spi::LockClass::Customer, &[account]);
}

static TRY_LOCK_ROW: Stmt = Stmt { sql: "SELECT FROM billing.customers WHERE customer = $1 FOR NO KEY UPDATE SKIP LOCKED", args: &[TEXTOID] };

/// Takes the locks of a batch's customers (`debit_many`, `record_usage_many`), each with
/// its slot count, before any of its items is applied: in `batch::lock_order` (bytes order
/// of the customers, each followed by its slot accounts in slot order), so batches that
/// share customers never wait for each other in a cycle. Each lock is `lock_customer`'s.
pub fn lock_many(c: &mut SpiClient<'_>, customers: &[(&str, i32)]) -> Result<()> {
    for (customer, n) in crate::batch::lock_order(customers.iter().copied()) {
        lock_customer(c, customer)?;
        for k in 1..n {
            advisory_lock(&super::slots::account(customer, k));
        }
    }
    Ok(())
}

/// `lock_customer` without waiting: false when another transaction holds it.
pub fn try_lock_customer(c: &mut SpiClient<'_>, customer: &str) -> Result<bool> {
    if crate::cluster::citus() {
        Ok(!crate::pg::spi::run(c, &TRY_LOCK_ROW, &[customer.into()])?.is_empty())
    } else {
        Ok(crate::pg::spi::try_xact_lock(crate::pg::spi::LockClass::Customer, &[customer]))
    }
}

pub fn unknown_customer(customer: &str) -> BillingError {
    BillingError::new(UNKNOWN, format!("unknown customer \"{customer}\"")).hint("A customer exists from its first billing.grant.")
}
