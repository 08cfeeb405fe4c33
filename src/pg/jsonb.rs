//! Reading jsonb arguments in place, with Postgres's own iterator.
//!
//! pgrx's `JsonB` prints a jsonb value to text and parses the text into a
//! `serde_json::Value`; storing such a value prints and parses it once more. For the few
//! things read off a jsonb argument on a hot path (how deep it nests, a delivery's
//! headers) the iterator walks the stored form instead, and the datum itself is what gets
//! stored.
use pgrx::pg_sys::{self, JsonbIteratorToken as T};
use std::collections::HashMap;

/// Walks jsonb `d`, `skip_nested` as `JsonbIteratorNext` takes it, handing every token
/// to `f` until it returns false.
///
/// # Safety
/// `d` must be a jsonb datum.
unsafe fn walk(d: pg_sys::Datum, skip_nested: bool, mut f: impl FnMut(T::Type, &pg_sys::JsonbValue) -> bool) {
    let jb = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
    let mut v = std::mem::MaybeUninit::<pg_sys::JsonbValue>::zeroed();
    loop {
        let tok = pg_sys::JsonbIteratorNext(&mut it, v.as_mut_ptr(), skip_nested);
        // The iterator's memory, when the walk stops early, goes with the call's context.
        if tok == T::WJB_DONE || !f(tok, &*v.as_ptr()) {
            return;
        }
    }
}

/// How deep arrays and objects nest in jsonb `d`, counted up to the first level past
/// `limit` (a top-level scalar counts as one: jsonb stores it as a one-element array).
///
/// # Safety
/// `d` must be a jsonb datum.
pub unsafe fn depth(d: pg_sys::Datum, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    walk(d, false, |tok, _| {
        match tok {
            T::WJB_BEGIN_ARRAY | T::WJB_BEGIN_OBJECT => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            T::WJB_END_ARRAY | T::WJB_END_OBJECT => depth -= 1,
            _ => {}
        }
        deepest <= limit
    });
    deepest
}

/// The members of top-level object `d` whose values are strings, names folded to ASCII
/// lower case (nothing when `d` is not an object). Where two names fold to one, the later
/// in jsonb's key order wins.
///
/// # Safety
/// `d` must be a jsonb datum.
pub unsafe fn string_members(d: pg_sys::Datum) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut key: Option<String> = None;
    let text = |v: &pg_sys::JsonbValue| {
        let s = v.val.string;
        String::from_utf8_lossy(std::slice::from_raw_parts(s.val as *const u8, s.len as usize)).into_owned()
    };
    walk(d, true, |tok, v| match tok {
        T::WJB_BEGIN_OBJECT | T::WJB_END_OBJECT => true,
        T::WJB_KEY => {
            key = Some(text(v).to_ascii_lowercase());
            true
        }
        T::WJB_VALUE => {
            if let (Some(k), pg_sys::jbvType::jbvString) = (key.take(), v.type_) {
                out.insert(k, text(v));
            }
            true
        }
        _ => false, // an array or a scalar at the top: no headers
    });
    out
}
