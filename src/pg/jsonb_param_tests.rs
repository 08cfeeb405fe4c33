//! `#[pg_test]`s of `spi::jsonb_param`: the jsonb it builds directly is byte for byte the
//! one `jsonb_in` makes of the value's text.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::json;

    /// The varlena bytes of a jsonb datum.
    fn bytes(d: pg_sys::Datum) -> Vec<u8> {
        unsafe {
            let p = d.cast_mut_ptr::<pg_sys::varlena>();
            std::slice::from_raw_parts(p as *const u8, pgrx::varlena::varsize_any(p)).to_vec()
        }
    }

    #[pg_test]
    fn jsonb_param_is_what_jsonb_in_makes() {
        let cases = [
            json!({"ttl_us": 900_000_000i64}),
            json!({"actual": 37}),
            json!({"actual": 0}),
            json!({"requested": null}),
            json!({"requested": -120_000_000_000i64, "a": true, "bb": false, "c": "x\"y\\n", "é": "ü", "": ""}),
            json!({"n": i64::MAX, "m": i64::MIN, "k": 10_000, "j": 100_000_000}),
            json!({"zz": 1, "a": 2, "aaa": 3, "b": 4}),
        ];
        for v in cases {
            let direct = crate::pg::spi::jsonb_param(v.clone()).datum().expect("not null").sans_lifetime();
            let text = v.to_string();
            let cstr = std::ffi::CString::new(text.clone()).unwrap();
            let parsed = unsafe { pgrx::fcinfo::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(cstr.as_ptr()))]) }
                .expect("not null");
            assert_eq!(bytes(direct), bytes(parsed), "{text}");
        }
    }
}
