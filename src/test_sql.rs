//! Helpers shared by the `#[pg_test]` modules: run SQL, catch its SQLSTATE, pin the clock.
use pgrx::prelude::*;

/// Creates `pg_temp.sqlstate_of(q)` ('ok', or the SQLSTATE `q` raised) and
/// `pg_temp.outcome_of(q)` (`q`'s text result, or its SQLSTATE), each running `q` in a
/// subtransaction so its effects are rolled back on an error, and pins `billing.clock`.
pub fn prepare(clock_at: &str) {
    Spi::run(
        "CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$;
         CREATE FUNCTION pg_temp.outcome_of(q text) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE r text; BEGIN EXECUTE q INTO r; RETURN r; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
    )
    .unwrap();
    clock(clock_at);
}

pub fn clock(t: &str) {
    Spi::run(&format!("SET LOCAL billing.clock = '{t}'")).unwrap();
}

/// The one value `sql` returns; panics on an error or NULL.
pub fn q<T: FromDatum + IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// The SQLSTATE a statement raises ('ok' if none).
pub fn state(sql: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()]).unwrap().unwrap()
}

/// A statement's one text result, or the SQLSTATE it raised.
pub fn outcome(sql: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT pg_temp.outcome_of($1)", &[sql.into()]).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_default()
}

/// Panics with `verify()`'s rows unless there are none.
pub fn clean() {
    let problems: i64 = q("SELECT count(*) FROM billing.verify()");
    if problems != 0 {
        let rows: String =
            q("SELECT string_agg(format('%s %s %s %s %s', customer, check_name, expected, actual, detail), E'\\n') FROM billing.verify()");
        panic!("verify() reports inconsistencies:\n{rows}");
    }
}

pub fn bal(c: &str) -> i64 {
    q(&format!("SELECT billing.balance('{c}')"))
}
