//! `#[pg_test]`s of `records::Records`: rows handed over as one `record[]` read back
//! through a column definition list as they were written, NULLs included.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::pg::records::Records;
    use pgrx::prelude::*;
    use serde_json::json;

    const COLUMNS: &str = "u(t text, n int8, id uuid, at timestamptz, b bool, j jsonb)";

    fn records() -> Records {
        Records::new(&[pg_sys::TEXTOID, pg_sys::INT8OID, pg_sys::UUIDOID, pg_sys::TIMESTAMPTZOID, pg_sys::BOOLOID, pg_sys::JSONBOID])
    }

    fn read(r: Records) -> Option<String> {
        Spi::get_one_with_args::<String>(
            &format!(
                "SELECT string_agg(concat_ws('|', coalesce(t, '-'), coalesce(n::text, '-'), coalesce(id::text, '-'),
                                             coalesce(extract(epoch FROM at)::text, '-'), coalesce(b::text, '-'), coalesce(j::text, '-')), ';')
                   FROM unnest($1::record[]) AS {COLUMNS}"
            ),
            &[r.param()],
        )
        .unwrap()
    }

    #[pg_test]
    fn records_read_back_as_written() {
        let id = pgrx::Uuid::from_bytes([7; 16]);
        let mut r = records();
        let j = crate::pg::spi::jsonb_param(json!({"k": "v", "n": 3}));
        r.push(&[
            "é Ü".into_datum(),
            i64::MIN.into_datum(),
            id.into_datum(),
            crate::pg::spi::ts(1_000_000).into_datum(),
            true.into_datum(),
            j.datum().map(|d| d.sans_lifetime()),
        ]);
        r.push(&[None, None, None, None, None, None]);
        let empty = crate::pg::spi::jsonb_param(json!({}));
        r.push(&["x".repeat(3000).into_datum(), 0i64.into_datum(), None, None, false.into_datum(), empty.datum().map(|d| d.sans_lifetime())]);
        let want = format!(
            "é Ü|{}|07070707-0707-0707-0707-070707070707|946684801.000000|true|{{\"k\": \"v\", \"n\": 3}};-|-|-|-|-|-;{}|0|-|-|false|{{}}",
            i64::MIN,
            "x".repeat(3000)
        );
        assert_eq!(read(r).as_deref(), Some(want.as_str()));
        assert_eq!(read(records()), None, "no rows: an empty array");
    }

    #[pg_test(error = "function return row and query-specified return row do not match")]
    fn records_are_read_with_their_own_types() {
        let mut r = records();
        r.push(&["a".into_datum(), 1i64.into_datum(), None, None, None, None]);
        Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM unnest($1::record[]) AS u(t text, n int4, id uuid, at timestamptz, b bool, j jsonb)",
            &[r.param()],
        )
        .unwrap();
    }
}
